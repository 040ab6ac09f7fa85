import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.mask_and_save import mask_and_save

mask_and_save(
    snakemake.params.settings,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.classes,
    snakemake.input.cams,
    snakemake.output.erased,
    snakemake.output.npz,
    snakemake.output.table,
    control=snakemake.params.control,
    seed=snakemake.params.seed,
)
