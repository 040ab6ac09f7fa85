import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.prepare import prepare

prepare(
    snakemake.params.dataset,
    snakemake.output.images,
    snakemake.output.index,
    snakemake.output.classes,
    snakemake.output.skipped,
    threads=snakemake.threads,
)
