import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.compute_cams import compute_cams

compute_cams(
    snakemake.params.settings,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.weights,
    snakemake.input.meta,
    snakemake.input.selected,
    snakemake.output.cams,
    snakemake.output.table,
)
