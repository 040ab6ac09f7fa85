import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.decide_cycle import should_run
from proxyattention.stages.find_misclassified import find_misclassified

find_misclassified(
    snakemake.params.settings,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.weights,
    snakemake.input.meta,
    snakemake.output.predictions,
    snakemake.output.selected,
    run=should_run(snakemake.input.decision),
)
