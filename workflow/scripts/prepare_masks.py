import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.prepare_masks import prepare_masks

prepare_masks(snakemake.params.dataset, snakemake.input.index, snakemake.output.masks, threads=snakemake.threads)
