import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.files.report import figure_names
from proxyattention.stages.figures import figures

figures(
    snakemake.input.summary,
    snakemake.params.cells,
    list(snakemake.input.metrics),
    {name: snakemake.output[name] for name in figure_names(snakemake.config)},
    comparisons=[tuple(pair) for pair in snakemake.params.comparisons],
    target_accuracy=snakemake.params.target_accuracy,
    stop_rule=snakemake.params.stop_rule,
    effect_of_interest=snakemake.params.effect_of_interest,
)
