# Snakemake patterns and input functions of the workflow. The folder layout itself
# lives in proxyattention/files/layout.py, shared with the command line.
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from proxyattention.settings.schema import ConfigError
from proxyattention.settings.validate import check_config, validate as validate_config
from proxyattention.settings.stage_settings import owner as owning_arm, stage_settings
from proxyattention.settings.model_checks import ModelCheckError, check_models, hub_problem
from proxyattention.files.report import figure_names
from proxyattention.settings import arms, sizes
from proxyattention.files import layout
from proxyattention.runtime import warm
from snakemake.logging import logger

def config_source():
    """Where the config came from, for a message about it: its files and any --config values."""
    files = ", ".join(map(str, workflow.configfiles)) or "none"
    given = workflow.config_settings.config_args
    return f"config file: {files}" + (f"; with --config {' '.join(map(str, given))}" if given else "")


def retype_command_line_config():
    """Snakemake reads a --config value's list or mapping with YAML's BaseLoader, which leaves every
    item a string ("seeds=[0, 1]" gives ["0", "1"], refused as not integers); read those items again
    as a config file's YAML would ("1" -> 1, "true" -> True, names stay names)."""
    import yaml

    def retyped(value):
        if isinstance(value, list):
            return [retyped(v) for v in value]
        if isinstance(value, dict):
            return {k: retyped(v) for k, v in value.items()}
        if isinstance(value, str):
            try:
                loaded = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return loaded if isinstance(loaded, (int, float, bool)) else value
        return value

    def merged(base, new):  # the retyped values into what Snakemake merged, key by key
        if isinstance(base, dict) and isinstance(new, dict):
            return {**base, **{k: merged(base.get(k), v) for k, v in new.items()}}
        return new

    for key, value in workflow.config_settings.config.items():
        if isinstance(value, (list, dict)) and key in config:
            config[key] = merged(config[key], retyped(value))


retype_command_line_config()
try:
    validate_config(config)
    check_config(config)
except ConfigError as err:
    raise WorkflowError(f"{err}\n({config_source()})")


if workflow.is_main_process:
    logger.info(layout.describe_grid(config, workflow.configfiles))
    if (message := layout.verdict_warning(config)) is not None:
        logger.warning(f"warning: {message}")
    try:
        for message in check_models(config):
            logger.warning(f"warning: {message}")
    except ModelCheckError as err:
        raise WorkflowError(f"{err}\n({config_source()})")
    size_errors, size_warnings = sizes.size_messages(config)  # datasets with train_sizes: listed, not decoded
    for message in size_warnings:
        logger.warning(f"warning: {message}")
    if size_errors:
        raise WorkflowError("\n".join(size_errors)
                            + f"\n({config_source()})")


def check_hub_weights():
    """From onstart (a real run, once the jobs to run are known, before any starts): every model
    whose finetune is still to run with weights: hub must find them cached or reachable, rather
    than fail in its finetune after retries. A dry run loads nothing and is not checked."""
    pending = sorted({job.wildcards.model for job in workflow.dag.needrun_jobs() if job.rule.name == "finetune"})
    for name in pending:
        spec = config["models"][name]
        if spec["weights"] == "hub" and (problem := hub_problem(f"models.{name}.weights", spec["timm_name"])):
            raise WorkflowError(f"{problem}\n({config_source()})")


# profiles/slurm reads these as "$VAR" (Snakemake expands environment variables in resource
# values when it evaluates them). An unset variable would stay the literal "$VAR" and reach
# sbatch; set to empty it is left out of the sbatch call.
for variable, default in (("PA_SLURM_ACCOUNT", ""), ("PA_SLURM_PARTITION", ""), ("PA_SLURM_GPU_MODEL", ""),
                          ("PA_SLURM_GPUS", "1")):
    os.environ.setdefault(variable, default)
# ... and these from the config (cluster.scale), whatever the environment says: the run's own file decides.
for variable, key in (("PA_SLURM_MEMORY_SCALE", "memory"), ("PA_SLURM_TIME_SCALE", "time")):
    os.environ[variable] = repr(float(config["cluster"]["scale"][key]))


def slurm_requests():
    """What each kind of cluster job asks for at its first attempt, from the resources a profile set
    (profiles/slurm's set-resources, scaled by cluster.scale), as Snakemake adds up a group's: its
    stages run one after another, so the largest memory and GPUs, and the sum of their times.
    Empty when no profile set the model stages' resources (a local run)."""
    given = dict(workflow.resource_settings.overwrite_resources)
    if "finetune" not in given:
        return []

    def value(rule, key):
        resource = dict(given[rule].items()).get(key) if rule in given else None
        raw = getattr(resource, "raw", resource)  # the profile's expression, as written
        if raw is None:
            return 0
        try:
            return float(eval(os.path.expandvars(str(raw)), {"attempt": 1, "int": int, "float": float}))
        except Exception:
            return 0

    proxy_stages = ["find_misclassified", "compute_cams", "mask_and_save", "retrain", "evaluate", "measure"]
    if arms.names_of_kind(config, "proxy") and config["faithfulness"]["enabled"]:
        proxy_stages.append("faithfulness")
    kinds = [("a dataset's preparation", ["prepare", "prepare_masks"]), ("a finetune", ["finetune", "evaluate", "measure"]),
             ("a cycle of an arm that adds images", proxy_stages),
             ("a cycle of a baseline arm", ["retrain", "evaluate", "measure"])]
    if config["cluster"]["group"] == "stage":
        kinds = [(f"{r}", [r]) for r in ["prepare", "prepare_masks", "finetune", *proxy_stages]]
    lines = []
    for name, rules in kinds:
        memory = max(value(r, "mem_mb") for r in rules)
        minutes = sum(value(r, "runtime") for r in rules)
        gpus = max(value(r, "gpu") for r in rules)
        lines.append(f"{name}: {memory / 1000:g} GB, {int(minutes) // 60} h {int(minutes) % 60:02d} min"
                     + (f", {gpus:g} GPU" if gpus else ""))
    return lines


if workflow.is_main_process and (requests := slurm_requests()):  # before anything is submitted
    logger.info("cluster jobs ask for (first attempt; later attempts more; cluster.scale memory "
                f"{config['cluster']['scale']['memory']:g}, time {config['cluster']['scale']['time']:g}): "
                + "; ".join(requests))

RESULTS = config["results"]
PREPARED = layout.PREPARED.replace("{results}", RESULTS)
RUN = layout.RUN.replace("{results}", RESULTS)
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
RUN_ID = "{dataset}/{model}/seed{seed}/{arm}/cycle{cycle}"


WARM_SERVER = []


def report_command():
    """The command that builds this run's report: its own config files and --config values (a bare
    `snakemake --report` reads the demo's config.yaml, and so another run's results)."""
    import shlex

    words = ["snakemake", "--report", f"{RESULTS}/report.html"]
    files = [os.path.relpath(f) for f in workflow.config_settings.configfiles]
    if files:
        words += ["--configfile", *files]
    if workflow.config_settings.config_args:
        words += ["--config", *workflow.config_settings.config_args]
    return " ".join(shlex.quote(str(w)) for w in words)


def preparation_warnings():
    """What each dataset's prepare job warned of (classes.json ``warnings``), for the end of the run:
    a warning only in a job's log is a warning nobody reads."""
    lines = []
    for dataset in config["datasets"]:
        path = Path(prepared("classes.json").format(dataset=dataset))
        if path.exists():
            import json

            lines += [f"{dataset}: {note}" for note in json.loads(path.read_text()).get("warnings", [])]
    return lines


def unknown_costs():
    """Lines naming each (dataset, model, arm) whose stage cost summary.csv leaves blank, and why
    (its cost_note); empty when every cost is known or there is no summary."""
    path = Path(RESULTS) / "summary.csv"
    if not path.exists():
        return []
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if "cost_note" not in frame or "proxy_seconds" not in frame:
        return []
    blank = frame[frame.proxy_seconds.isna()]
    return [f"{d}/{m} {a}: cost unknown ({'; '.join(sorted(set(g.cost_note.dropna().astype(str))))})"
            for (d, m, a), g in blank.groupby(["dataset", "model", "arm"], sort=False)]


def start_warm_server():
    """Local runs: one process imports torch once and forks a child per script job (proxyattention/warm.py)."""
    if not config["warm_start"] or not workflow.local_exec or workflow.deployment_settings.deployment_method:
        return  # off for cluster executors, and for --use-conda/--sdm: jobs run another Python
    server = warm.start_server(f"{LOGS}/warm_start.log", extra_path=str(Path(workflow.basedir) / "workflow"))
    if server is None:
        logger.warning(f"warm start: the server did not start (see {LOGS}/warm_start.log); jobs start cold")
    else:
        WARM_SERVER.append(server)


def stop_warm_server():
    while WARM_SERVER:
        WARM_SERVER.pop().stop()


def one_of(names):
    """A wildcard pattern matching exactly the configured names, so paths never collide."""
    return "|".join(re.escape(str(n)) for n in names)


# Every dataset of the grid: a configured dataset, or one per training size (name/n20pc: settings/sizes.py).
RUN_DATASETS = sizes.run_datasets(config)
FIGURES = figure_names(config)


wildcard_constraints:
    dataset=one_of(dict.fromkeys([*config["datasets"], *RUN_DATASETS])),
    model=one_of(config["models"]),
    arm=f"finetune|{one_of(config['arms'])}",
    seed=r"\d+",
    cycle=r"\d+",


def prepared(name):
    return f"{PREPARED}/{name}"


def prepared_file(name):
    """Input function: a prepared file of the job's dataset (the dataset a training size is of)."""
    return lambda wc: prepared(name).format(dataset=sizes.base_of(wc.dataset))


def run_file(name):
    return f"{RUN}/{name}"


def log_file(stage):
    return f"{LOGS}/{stage}/{RUN_ID}.log"


def bench_file(stage):
    return f"{BENCH}/{stage}/{RUN_ID}.tsv"


def cell_of(wc):
    return (wc.dataset, wc.model, wc.seed, wc.arm, wc.cycle)


def previous_checkpoint(wc):
    prev = layout.previous_run_dir(RESULTS, *cell_of(wc))
    return {"weights": f"{prev}/model.safetensors", "meta": f"{prev}/model.json"}


def previous_optimizer(wc):
    return f"{layout.previous_run_dir(RESULTS, *cell_of(wc))}/optimizer.safetensors"


def previous_checkpoint_inputs(wc):
    """The previous checkpoint and optimizer state, which a cycle skipped by the stop-rule carries over."""
    inputs = {f"previous_{key}": path for key, path in previous_checkpoint(wc).items()}
    return {**inputs, "previous_optimizer": previous_optimizer(wc)}


def init_checkpoint(wc):
    """Where a retrain starts: the previous checkpoint, or nothing (pretrained weights); with
    cycle_mode: continue also the previous job's optimizer state, so the run goes on."""
    if config["training"]["retrain_from"] != "previous":
        return {}
    inputs = {f"init_{key}": path for key, path in previous_checkpoint(wc).items()}
    if config["training"]["cycle_mode"] == "continue":
        inputs["init_optimizer"] = previous_optimizer(wc)
    return inputs


def previous_metrics(wc):
    return layout.metrics_before(RESULTS, *cell_of(wc))


ADDING_ARMS = arms.names_of_kind(config, *arms.ADDING_KINDS)
# Arms that select, or map, from the previous training job's record (training_pass.npz) rather
# than by a separate pass: their select_from_record / maps_from_record jobs replace
# find_misclassified / compute_cams.
RECORD_SELECT_ARMS = [a for a in ADDING_ARMS if arms.selects_from_record(config, a)]
RECORD_MAPS_ARMS = [a for a in ADDING_ARMS if arms.maps_from_record(config, a)]
PASS_SELECT_ARMS = [a for a in ADDING_ARMS if a not in RECORD_SELECT_ARMS]
PASS_MAPS_ARMS = [a for a in ADDING_ARMS if a not in RECORD_MAPS_ARMS]
RECORDING = bool(RECORD_SELECT_ARMS or RECORD_MAPS_ARMS)  # training jobs write training_pass.npz


def arm_pattern(names):
    """A wildcard constraint for a set of arms that may be empty (then it matches no arm)."""
    return one_of(names) if names else "(?!)"


def previous_record(wc):
    return f"{layout.previous_run_dir(RESULTS, *cell_of(wc))}/training_pass.npz"


def extra_images(wc):
    adds = wc.arm in ADDING_ARMS
    return layout.erased_for_training(RESULTS, config["training"]["accumulate"], adds, *cell_of(wc))


def cycle_group(wc):
    """The cluster job a stage's job runs in (Snakemake job groups; ignored by local runs): one per
    cycle of one arm, named from the job's own wildcards, so a shared cycle-1 job runs in the
    group of the arm that owns it (stage_settings.owner) and the other arms' groups wait for that group.
    None (one cluster job per stage) under ``cluster.group: stage``."""
    if config["cluster"]["group"] == "stage":
        return None
    return layout.group_name(*cell_of(wc))


def faithfulness_group(wc):
    """The cluster job of the arm whose files it reads last: its random_erase control's cycle
    (the control's offsets; that group already waits for this arm's maps), else its own cycle."""
    if config["cluster"]["group"] == "stage":
        return None
    control = arms.random_control(config, wc.arm)
    return layout.group_name(wc.dataset, wc.model, wc.seed, control or wc.arm, wc.cycle)


def prepare_group(wc):
    """One cluster job for a dataset's prepare and prepare_masks (None under ``cluster.group: stage``)."""
    return None if config["cluster"]["group"] == "stage" else f"{wc.dataset}.prepare"


def settings_for(stage):
    """Input function: the settings ``stage`` reads, for this job's dataset, model and cycle."""

    def settings(wc):
        return stage_settings(config, wc.dataset, wc.model, int(wc.cycle), stage, wc.arm)

    return settings


def grid():
    return layout.grid(config)


def run_dir_of(*cell):
    return layout.run_dir(RESULTS, *cell)


def all_metrics():
    return [f"{run_dir_of(*cell)}/metrics.json" for cell in grid()]


def all_per_image():
    return [f"{run_dir_of(*cell)}/per_image.npz" for cell in grid()]


def all_measures():
    return [f"{run_dir_of(*cell)}/measures.json" for cell in grid()]


def all_targets():
    targets = [f"{RESULTS}/summary.csv"]
    targets += expand(f"{RESULTS}/tables/{{dataset}}_comparison.csv", dataset=RUN_DATASETS)
    targets += expand(f"{RESULTS}/tables/{{dataset}}_verdicts.csv", dataset=RUN_DATASETS)
    targets += expand(f"{RESULTS}/figures/{{figure}}.png", figure=FIGURES)
    targets += example_figures()
    return targets


def stop_rule_on():
    """Whether a stop rule may skip cycles (it decides on the validation split)."""
    return any(value is not None for value in config["stop_when"].values())


def dataset_spec(wc):
    """The dataset's settings in key order, so that reordering keys in a config file (or
    writing it with sorted keys) is not a change of params that would prepare it again; of its
    training sizes only the largest, the one that chooses the images: adding a smaller size
    prepares nothing again."""
    spec = dict(sorted(config["datasets"][wc.dataset].items()))
    if spec.get("train_sizes"):
        kind, values = next(iter(spec["train_sizes"].items()))
        spec["train_sizes"] = {kind: [max(values)]}
    return spec


def prepared_inputs(wc):
    base = sizes.base_of(wc.dataset)
    return {
        "images": prepared("images.npy").format(dataset=base),
        "index": prepared("index.csv").format(dataset=base),
        "classes": prepared("classes.json").format(dataset=base),
    }


def erase_control(wc):
    return arms.CONTROLS[arms.kind_of(config, wc.arm)]


def shared_path(stage, name, dataset, model, seed, arm, cycle):
    """``name`` in the folder of the arm whose ``stage`` job this arm uses (in cycle 1, arms
    with equal settings share one job: stage_settings.owner)."""
    owner = owning_arm(config, dataset, model, arm, int(cycle), stage)
    return f"{run_dir_of(dataset, model, seed, owner, cycle)}/{name}"


def shared_run_file(stage, name):
    """Input function form of shared_path."""
    return lambda wc: shared_path(stage, name, *cell_of(wc))


def mask_seed(wc):
    return layout.mask_seed(wc.seed, wc.cycle)


def cycle_decision(wc):
    """The stop-rule decision of a cycle after the finetune (cycle 0 has none)."""
    return {} if int(wc.cycle) == 0 else {"decision": run_file("decision.json").format(**wc)}


def erased_cells():
    return [cell for cell in grid() if cell[3] in ADDING_ARMS]


PROXY_STAGES = ("find_misclassified", "compute_cams", "mask_and_save")


def stage_rule(arm, stage):
    """Which job does ``stage``'s work for ``arm`` (its name): a record-reading arm's
    select_from_record / maps_from_record in place of find_misclassified / compute_cams."""
    if stage == "find_misclassified" and arm in RECORD_SELECT_ARMS:
        return "select_from_record"
    if stage == "compute_cams" and arm in RECORD_MAPS_ARMS:
        return "maps_from_record"
    return stage


def stage_jobs(file_of):
    """Per erased cell, ``file_of(rule)`` (log_file or bench_file) of each Proxy Attention stage job
    it used (a shared cycle-1 job's is its owner's), keyed by the job's rule (the stage name its
    log's time line carries)."""
    out = []
    for dataset, model, seed, arm, cycle in erased_cells():
        files = {}
        for stage in PROXY_STAGES:
            owner = arm if stage == "mask_and_save" else owning_arm(config, dataset, model, arm, int(cycle), stage)
            job_rule = stage_rule(owner, stage)
            files[job_rule] = file_of(job_rule).format(dataset=dataset, model=model, seed=seed, arm=owner, cycle=cycle)
        out.append(files)
    return out


def stage_logs():
    """The stage jobs' logs: aggregate reads each stage's own time from them."""
    return stage_jobs(log_file)


def stage_benchmarks():
    """The stage jobs' benchmark files (Snakemake writes one when a job succeeds): where a job's log
    holds no stage time, aggregate counts its benchmark's. Params, not inputs: a missing one must not
    rerun a finished job and every cycle after it for a cost figure."""
    return stage_jobs(bench_file)


def all_erased_tables():
    return [f"{run_dir_of(*cell)}/erased.csv" for cell in erased_cells()]


def example_inputs(wc):
    """The first seed's first Proxy Attention cycle of a (dataset, model, proxy arm)."""
    cell = (wc.dataset, wc.model, min(config["seeds"]), wc.arm, 1)
    return {
        "cams": shared_path("compute_cams", "cams.npz", *cell),
        "erased": f"{run_dir_of(*cell)}/erased.npz",
        "erased_table": f"{run_dir_of(*cell)}/erased.csv",
        "selected": shared_path("find_misclassified", "selected.csv", *cell),
    }


PROXY_ARMS = arms.names_of_kind(config, "proxy")


def faithfulness_cells():
    """Every proxy-kind arm's cycles, when the faithfulness measure is on."""
    if not config["faithfulness"]["enabled"]:
        return []
    return [cell for cell in grid() if cell[3] in PROXY_ARMS and int(cell[4]) > 0]


def all_faithfulness():
    return [f"{run_dir_of(*cell)}/faithfulness.json" for cell in faithfulness_cells()]


RECORD_PROXY_ARMS = [a for a in PROXY_ARMS if a in RECORD_SELECT_ARMS or a in RECORD_MAPS_ARMS]


def agreement_cells():
    """Every cycle of each proxy-kind arm that reads the training pass, when the agreement is on."""
    if not config["agreement"]["enabled"]:
        return []
    return [cell for cell in grid() if cell[3] in RECORD_PROXY_ARMS and int(cell[4]) > 0]


def all_agreement():
    return [f"{run_dir_of(*cell)}/agreement.json" for cell in agreement_cells()]


def agreement_after(wc):
    """Files the agreement job waits for and does not read, so that it comes last in its arm's
    cycle job (one GPU at a time): that cycle's measures.json (which comes after its metrics.json),
    and the arm's own faithfulness.json when that job joins the same cluster job (an arm without a
    random_erase control)."""
    # ancient: an order, not a dependency on content (a rerun measure, after an evaluation setting
    # changed, must not rerun this job: Snakemake skips ancient inputs when it propagates reruns)
    inputs = {"after": ancient(run_file("measures.json").format(**wc))}
    if config["faithfulness"]["enabled"] and arms.random_control(config, wc.arm) is None:
        inputs["after_faithfulness"] = ancient(run_file("faithfulness.json").format(**wc))
    return inputs


def faithfulness_control(wc):
    """The erased.csv of the random_erase arm that matches this proxy arm (its offsets), if any;
    and the measures.json of the cycle whose cluster job it joins (faithfulness_group), which it does
    not read: it orders the job last in that group (measure comes after evaluate). Snakemake asks a
    group for the sum of what jobs that could run at once need, so beside retrain or measure it
    would ask for a second GPU."""
    control = arms.random_control(config, wc.arm)
    joined = run_dir_of(wc.dataset, wc.model, wc.seed, control or wc.arm, wc.cycle)
    inputs = {"after": ancient(f"{joined}/measures.json")}  # an order only (see agreement_after)
    if control is not None:
        inputs["control"] = f"{joined}/erased.csv"
    return inputs


def example_figures():
    if not PROXY_ARMS or config["cycles"] < 1:
        return []
    return expand(
        f"{RESULTS}/figures/examples/{{dataset}}/{{model}}/{{arm}}.png",
        dataset=RUN_DATASETS,
        model=config["models"],
        arm=PROXY_ARMS,
    )
