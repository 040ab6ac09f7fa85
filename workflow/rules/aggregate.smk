rule aggregate:
    input:
        metrics=all_metrics(),
        per_image=all_per_image(),
        measures=all_measures(),
        erased=all_erased_tables(),
        infos=[prepared("classes.json").format(dataset=sizes.base_of(d)) for d in RUN_DATASETS],
        indexes=[prepared("index.csv").format(dataset=sizes.base_of(d)) for d in RUN_DATASETS],
        faithfulness=all_faithfulness(),
        agreement=all_agreement(),
    output:
        summary=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        tables=expand(
            f"{RESULTS}/tables/{{dataset}}_comparison.csv", dataset=RUN_DATASETS
        ),
        verdicts=expand(f"{RESULTS}/tables/{{dataset}}_verdicts.csv", dataset=RUN_DATASETS),
        provenance=f"{RESULTS}/provenance.json",
        provenance_html=report(
            f"{RESULTS}/provenance.html",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
        compared=report(
            f"{RESULTS}/tables/compared.md",
            caption="../report/compared.rst",
            category="1. Verdicts",
        ),
        answers=report(
            expand(f"{RESULTS}/tables/{{dataset}}_answer.md", dataset=RUN_DATASETS),
            caption="../report/answer.rst",
            category="1. Verdicts",
        ),
        verdicts_html=report(
            expand(f"{RESULTS}/tables/{{dataset}}_verdicts.html", dataset=RUN_DATASETS),
            caption="../report/verdicts.rst",
            category="1. Verdicts",
        ),
    params:
        cells=grid(),
        erased_cells=erased_cells(),
        faithfulness_cells=faithfulness_cells(),
        agreement_cells=agreement_cells(),
        stage_logs=stage_logs(),
        stage_benchmarks=stage_benchmarks(),
        datasets=RUN_DATASETS,
        arms=list(config["arms"]),
        comparisons=arms.comparisons(config),
        stop_rule=stop_rule_on(),
        effect_of_interest=config["report"]["effect_of_interest"],
    log:
        f"{LOGS}/aggregate.log",
    localrule: True
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/aggregate.py"


rule figures:
    input:
        summary=f"{RESULTS}/summary.csv",
        provenance=f"{RESULTS}/provenance.json",
        metrics=all_metrics(),
    output:
        **{
            name: report(
                f"{RESULTS}/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category="1. Verdicts" if name == "paired_differences" else "Figures",
            )
            for name in FIGURES
        },
        svg=expand(f"{RESULTS}/figures/{{figure}}.svg", figure=FIGURES),
    params:
        cells=grid(),
        comparisons=arms.comparisons(config),
        target_accuracy=config["stop_when"].get("target_accuracy"),
        stop_rule=stop_rule_on(),
        effect_of_interest=config["report"]["effect_of_interest"],
    log:
        f"{LOGS}/figures.log",
    localrule: True
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/figures.py"


rule examples:
    input:
        unpack(prepared_inputs),
        unpack(example_inputs),
    output:
        report(
            f"{RESULTS}/figures/examples/{{dataset}}/{{model}}/{{arm}}.png",
            caption="../report/examples.rst",
            category="Examples",
        ),
        f"{RESULTS}/figures/examples/{{dataset}}/{{model}}/{{arm}}.svg",
    log:
        f"{LOGS}/examples/{{dataset}}/{{model}}/{{arm}}.log",
    localrule: True
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/examples.py"
