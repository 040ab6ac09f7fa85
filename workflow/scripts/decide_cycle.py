import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.decide_cycle import write_decision

write_decision(int(snakemake.wildcards.cycle), list(snakemake.input), snakemake.params.stop_when, snakemake.output[0])
