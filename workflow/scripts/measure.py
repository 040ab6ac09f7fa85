import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.evaluate import measure

measure(
    snakemake.params.settings,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.weights,
    snakemake.input.meta,
    snakemake.input.metrics,
    snakemake.input.per_image,
    snakemake.output.measures,
    masks_path=snakemake.input.masks,
)
