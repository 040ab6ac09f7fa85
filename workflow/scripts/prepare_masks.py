import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.scripting import setup

setup(snakemake)
from proxyattention.object_masks import prepare_masks

prepare_masks(snakemake.params.dataset, snakemake.input.index, snakemake.output.masks, threads=snakemake.threads)
