# The Proxy Attention stages of one cycle: they explain the previous cycle's model.


rule find_misclassified:
    input:
        unpack(prepared_inputs),
        unpack(previous_checkpoint),
        decision=run_file("decision.json"),
    output:
        predictions=run_file("predictions.csv"),
        selected=run_file("selected.csv"),
    wildcard_constraints:
        arm=arm_pattern(PASS_SELECT_ARMS),
    params:
        settings=settings_for("find_misclassified"),
    log:
        log_file("find_misclassified"),
    benchmark:
        bench_file("find_misclassified")
    threads: 1
    group:
        cycle_group
    resources:
        gpu=1,  # a local GPU slot (profiles/default); GPUs per SLURM job: profiles/slurm
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/find_misclassified.py"


rule compute_cams:
    input:
        unpack(prepared_inputs),
        unpack(previous_checkpoint),
        selected=shared_run_file("find_misclassified", "selected.csv"),
    output:
        cams=run_file("cams.npz"),
        table=run_file("cams.csv"),
    wildcard_constraints:
        arm=arm_pattern(PASS_MAPS_ARMS),
    params:
        settings=settings_for("compute_cams"),
    log:
        log_file("compute_cams"),
    benchmark:
        bench_file("compute_cams")
    threads: 1
    group:
        cycle_group
    resources:
        gpu=1,  # a local GPU slot (profiles/default); GPUs per SLURM job: profiles/slurm
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/compute_cams.py"


rule select_from_record:
    input:
        index=prepared_file("index.csv"),
        record=previous_record,
        decision=run_file("decision.json"),
    output:
        predictions=run_file("predictions.csv"),
        selected=run_file("selected.csv"),
    wildcard_constraints:
        arm=arm_pattern(RECORD_SELECT_ARMS),
    params:
        settings=settings_for("find_misclassified"),
    log:
        log_file("select_from_record"),
    benchmark:
        bench_file("select_from_record")
    threads: 1
    group:
        cycle_group
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/select_from_record.py"


rule maps_from_record:
    input:
        classes=prepared_file("classes.json"),
        record=previous_record,
        selected=shared_run_file("find_misclassified", "selected.csv"),
    output:
        cams=run_file("cams.npz"),
        table=run_file("cams.csv"),
    wildcard_constraints:
        arm=arm_pattern(RECORD_MAPS_ARMS),
    params:
        settings=settings_for("compute_cams"),
    log:
        log_file("maps_from_record"),
    benchmark:
        bench_file("maps_from_record")
    threads: 1
    group:
        cycle_group
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/maps_from_record.py"


rule mask_and_save:
    input:
        unpack(prepared_inputs),
        cams=shared_run_file("compute_cams", "cams.npz"),
    output:
        erased=directory(run_file("erased")),
        npz=run_file("erased.npz"),
        table=run_file("erased.csv"),
    wildcard_constraints:
        arm=one_of(ADDING_ARMS),
    params:
        settings=settings_for("mask_and_save"),
        control=erase_control,
        seed=mask_seed,
    log:
        log_file("mask_and_save"),
    benchmark:
        bench_file("mask_and_save")
    threads: 1
    group:
        cycle_group
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/mask_and_save.py"


rule faithfulness:
    input:
        unpack(prepared_inputs),
        unpack(previous_checkpoint),
        unpack(faithfulness_control),
        cams=shared_run_file("compute_cams", "cams.npz"),
        erased=run_file("erased.npz"),
    output:
        npz=run_file("faithfulness.npz"),
        json=run_file("faithfulness.json"),
    wildcard_constraints:
        arm=one_of(PROXY_ARMS),
    params:
        settings=settings_for("faithfulness"),
    log:
        log_file("faithfulness"),
    benchmark:
        bench_file("faithfulness")
    threads: 1
    group:
        faithfulness_group
    resources:
        gpu=1,  # a local GPU slot (profiles/default); GPUs per SLURM job: profiles/slurm
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/faithfulness.py"


rule agreement:
    input:
        unpack(prepared_inputs),
        unpack(previous_checkpoint),
        unpack(agreement_after),  # not read: orders it last in the cycle's cluster job (one GPU at a time)
        record=previous_record,
        selected=shared_run_file("find_misclassified", "selected.csv"),
        cams=shared_run_file("compute_cams", "cams.npz"),
        decision=run_file("decision.json"),
    output:
        run_file("agreement.json"),
    wildcard_constraints:
        arm=arm_pattern(RECORD_PROXY_ARMS),
    params:
        settings=settings_for("agreement"),
        maps_from_record=lambda wc: wc.arm in RECORD_MAPS_ARMS,
    log:
        log_file("agreement"),
    benchmark:
        bench_file("agreement")
    threads: 1
    group:
        cycle_group
    resources:
        gpu=1,  # a local GPU slot (profiles/default); GPUs per SLURM job: profiles/slurm
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/agreement.py"
