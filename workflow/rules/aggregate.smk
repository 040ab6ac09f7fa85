localrules:
    aggregate,
    figures,
    examples,


rule aggregate:
    input:
        metrics=all_metrics(),
        erased=all_erased_tables(),
        infos=expand(prepared("classes.json"), dataset=config["datasets"]),
    output:
        summary=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        tables=expand(
            f"{RESULTS}/tables/{{dataset}}_comparison.csv", dataset=config["datasets"]
        ),
    params:
        cells=grid(),
        erased_cells=erased_cells(),
        datasets=list(config["datasets"]),
        arms=list(config["arms"]),
        comparisons=arms.comparisons(config),
    log:
        f"{LOGS}/aggregate.log",
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/aggregate.py"


rule figures:
    input:
        summary=f"{RESULTS}/summary.csv",
        metrics=all_metrics(),
    output:
        **{
            name: report(
                f"{RESULTS}/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category="Figures",
            )
            for name in FIGURES
        },
        svg=expand(f"{RESULTS}/figures/{{figure}}.svg", figure=FIGURES),
    params:
        cells=grid(),
    log:
        f"{LOGS}/figures.log",
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
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/examples.py"
