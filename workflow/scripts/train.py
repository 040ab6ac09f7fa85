import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.decide_cycle import should_run, skip_training
from proxyattention.stages.train import train

inputs, out = snakemake.input, snakemake.output
if "decision" in inputs.keys() and not should_run(inputs.decision):
    skip_training(inputs.previous_weights, inputs.previous_meta, out.weights, out.meta, out.epochs, out.stats,
                  reason="stop rule held before this cycle", init_optimizer=inputs.previous_optimizer,
                  out_optimizer=out.optimizer, out_record=out.get("record"))
else:
    train(
        snakemake.params.settings,
        inputs.images,
        inputs.index,
        inputs.classes,
        out.weights,
        out.meta,
        out.epochs,
        out.stats,
        seed=int(snakemake.wildcards.seed),
        init_weights=inputs.get("init_weights"),
        init_meta=inputs.get("init_meta"),
        init_optimizer=inputs.get("init_optimizer"),
        out_optimizer=out.optimizer,
        out_record=out.get("record"),
        extra=list(inputs.extra) if "extra" in inputs.keys() else [],
        # Read from the config, not params: the worker count changes speed, not results,
        # and a params change would make Snakemake retrain everything.
        num_workers=snakemake.config["training"]["num_workers"],
    )
