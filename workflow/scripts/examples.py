import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.figures import examples

examples(
    snakemake.input.images,
    snakemake.input.cams,
    snakemake.input.erased,
    snakemake.input.selected,
    snakemake.input.classes,
    snakemake.output[0],
    erased_table=snakemake.input.erased_table,
)
