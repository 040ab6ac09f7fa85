import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.evaluate import evaluate

evaluate(
    snakemake.params.settings,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.weights,
    snakemake.input.meta,
    snakemake.input.stats,
    snakemake.output.metrics,
    decision=snakemake.input.get("decision"),
    out_per_image=snakemake.output.per_image,
)
