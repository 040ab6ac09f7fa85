from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the demo that a bare `snakemake` runs. A config file given on the command
# line (--configfile) is the whole configuration instead: it is not merged into the demo.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/proxy.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"


onstart:
    check_hub_weights()
    start_warm_server()


onsuccess:
    stop_warm_server()
    print(f"\nDone. Summary table: {RESULTS}/summary.csv")
    for line in preparation_warnings():  # said here, not only in the prepare job's log
        print(f"Warning: {line}")
    for line in unknown_costs():  # said here, not only in logs/aggregate.log
        print(f"Warning: {line}; its time figures leave it out")
    print(f"Build the report with: {report_command()}\n")


onerror:
    stop_warm_server()


rule all:
    input:
        all_targets(),
    default_target: True
