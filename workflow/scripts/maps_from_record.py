import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.from_record import maps_from_record

maps_from_record(
    snakemake.params.settings,
    snakemake.input.classes,
    snakemake.input.record,
    snakemake.input.selected,
    snakemake.output.cams,
    snakemake.output.table,
)
