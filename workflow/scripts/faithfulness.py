import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.faithfulness import faithfulness

faithfulness(
    snakemake.params.settings,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.weights,
    snakemake.input.meta,
    snakemake.input.cams,
    snakemake.input.erased,
    snakemake.output.npz,
    snakemake.output.json,
    control_csv=snakemake.input.get("control"),
    seed=int(snakemake.wildcards.seed),
    cycle=int(snakemake.wildcards.cycle),
)
