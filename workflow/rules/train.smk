TRAIN_OUTPUTS = dict(
    weights=run_file("model.safetensors"),
    meta=run_file("model.json"),
    epochs=run_file("epochs.csv"),
    stats=run_file("train_stats.json"),
    optimizer=run_file("optimizer.safetensors"),
)
if RECORDING:  # configs with an arm that reads the training pass: every training job writes its record
    TRAIN_OUTPUTS["record"] = run_file("training_pass.npz")


rule finetune:
    input:
        unpack(prepared_inputs),
    output:
        **TRAIN_OUTPUTS,
    wildcard_constraints:
        arm="finetune",
        cycle="0",
    params:
        settings=settings_for("train"),
    log:
        log_file("finetune"),
    benchmark:
        bench_file("finetune")
    threads: config["training"]["threads"]
    group:
        cycle_group
    resources:
        gpu=1,  # a local GPU slot (profiles/default); GPUs per SLURM job: profiles/slurm
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/train.py"


rule retrain:
    input:
        unpack(prepared_inputs),
        unpack(init_checkpoint),
        unpack(previous_checkpoint_inputs),
        decision=run_file("decision.json"),
        extra=extra_images,
    output:
        **TRAIN_OUTPUTS,
    wildcard_constraints:
        arm=one_of(config["arms"]),
    params:
        settings=settings_for("train"),
    log:
        log_file("retrain"),
    benchmark:
        bench_file("retrain")
    threads: config["training"]["threads"]
    group:
        cycle_group
    resources:
        gpu=1,  # a local GPU slot (profiles/default); GPUs per SLURM job: profiles/slurm
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/train.py"


rule decide_cycle:
    input:
        previous_metrics,
    output:
        run_file("decision.json"),
    wildcard_constraints:
        arm=one_of(config["arms"]),
    params:
        stop_when=config["stop_when"],
    log:
        log_file("decide_cycle"),
    localrule: True
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/decide_cycle.py"
