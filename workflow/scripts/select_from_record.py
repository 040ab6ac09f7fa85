import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.decide_cycle import should_run
from proxyattention.stages.from_record import select_from_record

select_from_record(
    snakemake.params.settings,
    snakemake.input.index,
    snakemake.input.record,
    snakemake.output.predictions,
    snakemake.output.selected,
    run=should_run(snakemake.input.decision),
)
