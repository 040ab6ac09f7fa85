import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.agreement import agreement
from proxyattention.stages.decide_cycle import should_run

agreement(
    snakemake.params.settings,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.weights,
    snakemake.input.meta,
    snakemake.input.record,
    snakemake.input.selected,
    snakemake.input.cams,
    snakemake.output[0],
    seed=int(snakemake.wildcards.seed),
    cycle=int(snakemake.wildcards.cycle),
    run=should_run(snakemake.input.decision),
    maps_from_record=snakemake.params.maps_from_record,
)
