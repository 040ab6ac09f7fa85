import stage_package  # noqa: F401  (the stage package of this checkout, installed or not)
from proxyattention.runtime.scripting import setup

setup(snakemake)
from proxyattention.stages.aggregate import aggregate

aggregate(
    snakemake.params.cells,
    list(snakemake.input.metrics),
    {tuple(cell): path for cell, path in zip(snakemake.params.erased_cells, snakemake.input.erased)},
    snakemake.output.summary,
    dict(zip(snakemake.params.datasets, snakemake.output.tables)),
    dict(zip(snakemake.params.datasets, snakemake.input.infos)),
    index_paths=dict(zip(snakemake.params.datasets, snakemake.input.indexes)),
    arms=snakemake.params.arms,
    comparisons=[tuple(pair) for pair in snakemake.params.comparisons],
    out_verdicts=dict(zip(snakemake.params.datasets, snakemake.output.verdicts)),
    stop_rule=snakemake.params.stop_rule,
    config=snakemake.config,
    effect_of_interest=snakemake.params.effect_of_interest,
    per_image_paths=list(snakemake.input.per_image),
    measures_paths=list(snakemake.input.measures),
    out_compared=snakemake.output.compared,
    faithfulness_paths={tuple(cell): path for cell, path in zip(snakemake.params.faithfulness_cells,
                                                                 snakemake.input.faithfulness)},
    agreement_paths={tuple(cell): path for cell, path in zip(snakemake.params.agreement_cells,
                                                             snakemake.input.agreement)},
    stage_logs={tuple(cell): logs for cell, logs in zip(snakemake.params.erased_cells, snakemake.params.stage_logs)},
    stage_benchmarks={tuple(cell): b for cell, b in zip(snakemake.params.erased_cells,
                                                        snakemake.params.stage_benchmarks)},
)
