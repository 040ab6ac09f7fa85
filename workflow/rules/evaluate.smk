rule evaluate:
    input:
        unpack(prepared_inputs),
        unpack(cycle_decision),
        weights=run_file("model.safetensors"),
        meta=run_file("model.json"),
        stats=run_file("train_stats.json"),
    output:
        metrics=run_file("metrics.json"),
        per_image=run_file("per_image.npz"),
    params:
        settings=settings_for("evaluate"),
    log:
        log_file("evaluate"),
    benchmark:
        bench_file("evaluate")
    threads: 1
    group:
        cycle_group
    resources:
        gpu=1,  # a local GPU slot (profiles/default); GPUs per SLURM job: profiles/slurm
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/evaluate.py"


rule measure:
    input:
        unpack(prepared_inputs),
        masks=prepared_file("masks.npy"),
        weights=run_file("model.safetensors"),
        meta=run_file("model.json"),
        metrics=run_file("metrics.json"),
        per_image=run_file("per_image.npz"),
    output:
        measures=run_file("measures.json"),
    params:
        settings=settings_for("measure"),
    log:
        log_file("measure"),
    benchmark:
        bench_file("measure")
    threads: 1
    group:
        cycle_group
    resources:
        gpu=1,  # a local GPU slot (profiles/default); GPUs per SLURM job: profiles/slurm
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/measure.py"
