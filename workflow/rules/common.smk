# Every path pattern and input function of the workflow lives here.
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from proxyattention.config import ConfigError, check_config, stage_settings, validate as validate_config
from proxyattention.report import FIGURE_NAMES as FIGURES

try:
    validate_config(config)
    check_config(config)
except ConfigError as err:
    raise WorkflowError(f"{err}\n(config file: {', '.join(map(str, workflow.configfiles)) or 'none'})")


RESULTS = config["results"]
PREPARED = f"{RESULTS}/prepared/{{dataset}}"
RUN = f"{RESULTS}/runs/{{dataset}}/{{model}}/seed{{seed}}/{{arm}}/cycle{{cycle}}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
RUN_ID = "{dataset}/{model}/seed{seed}/{arm}/cycle{cycle}"
FINETUNE_ARM = "finetune"

def one_of(names):
    """A wildcard pattern matching exactly the configured names, so paths never collide."""
    return "|".join(re.escape(str(n)) for n in names)


wildcard_constraints:
    dataset=one_of(config["datasets"]),
    model=one_of(config["models"]),
    arm="finetune|baseline|proxy|random_erase",
    seed=r"\d+",
    cycle=r"\d+",


def prepared(name):
    return f"{PREPARED}/{name}"


def run_file(name):
    return f"{RUN}/{name}"


def log_file(stage):
    return f"{LOGS}/{stage}/{RUN_ID}.log"


def bench_file(stage):
    return f"{BENCH}/{stage}/{RUN_ID}.tsv"


def run_dir_of(dataset, model, seed, arm, cycle):
    return RUN.format(dataset=dataset, model=model, seed=seed, arm=arm, cycle=cycle)


def previous_dir(wc):
    """The run folder of the cycle before this one: cycle 0 is the shared finetune."""
    cycle = int(wc.cycle)
    arm = FINETUNE_ARM if cycle == 1 else wc.arm
    return run_dir_of(wc.dataset, wc.model, wc.seed, arm, cycle - 1)


def previous_checkpoint(wc):
    prev = previous_dir(wc)
    return {"weights": f"{prev}/model.safetensors", "meta": f"{prev}/model.json"}


def previous_checkpoint_inputs(wc):
    return {f"previous_{key}": path for key, path in previous_checkpoint(wc).items()}


def init_checkpoint(wc):
    """Where a retrain starts: the previous checkpoint, or nothing (pretrained weights)."""
    if config["training"]["retrain_from"] == "previous":
        return {f"init_{key}": path for key, path in previous_checkpoint(wc).items()}
    return {}


def previous_metrics(wc):
    """metrics.json of every cycle before this one, cycle 0 first."""
    return [
        f"{run_dir_of(wc.dataset, wc.model, wc.seed, FINETUNE_ARM if c == 0 else wc.arm, c)}/metrics.json"
        for c in range(int(wc.cycle))
    ]


def extra_images(wc):
    """New images this retrain adds to the originals: none for baseline; this cycle's,
    and with accumulate every earlier cycle's, for the erasing arms."""
    if wc.arm == "baseline":
        return []
    cycle = int(wc.cycle)
    first = 1 if config["training"]["accumulate"] else cycle
    return [
        f"{run_dir_of(wc.dataset, wc.model, wc.seed, wc.arm, c)}/erased.npz"
        for c in range(first, cycle + 1)
    ]


def settings(wc):
    return stage_settings(config, wc.dataset, wc.model, int(getattr(wc, "cycle", 0)))


def grid():
    """Every (dataset, model, seed, arm, cycle) cell, cycle 0 under the shared finetune."""
    cells = []
    for dataset in config["datasets"]:
        for model in config["models"]:
            for seed in config["seeds"]:
                cells.append((dataset, model, seed, FINETUNE_ARM, 0))
                for arm in config["arms"]:
                    for cycle in range(1, config["cycles"] + 1):
                        cells.append((dataset, model, seed, arm, cycle))
    return cells


def all_metrics():
    return [f"{run_dir_of(*cell)}/metrics.json" for cell in grid()]


def all_targets():
    targets = [f"{RESULTS}/summary.csv"]
    targets += expand(f"{RESULTS}/tables/{{dataset}}_comparison.csv", dataset=config["datasets"])
    targets += expand(f"{RESULTS}/figures/{{figure}}.png", figure=FIGURES)
    targets += example_figures()
    return targets




def dataset_spec(wc):
    return config["datasets"][wc.dataset]


def prepared_inputs(wc):
    return {
        "images": prepared("images.npy").format(dataset=wc.dataset),
        "index": prepared("index.csv").format(dataset=wc.dataset),
        "classes": prepared("classes.json").format(dataset=wc.dataset),
    }


def erase_control(wc):
    """The random_erase arm erases the same area at a random place."""
    return "random" if wc.arm == "random_erase" else None


def mask_seed(wc):
    return int(wc.seed) * 1000 + int(wc.cycle)


def cycle_decision(wc):
    """The stop-rule decision of a cycle after the finetune (cycle 0 has none)."""
    return {} if int(wc.cycle) == 0 else {"decision": run_file("decision.json").format(**wc)}


ERASING_ARMS = ("proxy", "random_erase")


def erased_cells():
    return [cell for cell in grid() if cell[3] in ERASING_ARMS]


def all_erased_tables():
    return [f"{run_dir_of(*cell)}/erased.csv" for cell in erased_cells()]


def example_inputs(wc):
    """The first seed's first Proxy Attention cycle of a (dataset, model)."""
    run = run_dir_of(wc.dataset, wc.model, min(config["seeds"]), "proxy", 1)
    return {
        "cams": f"{run}/cams.npz",
        "erased": f"{run}/erased.npz",
        "selected": f"{run}/selected.csv",
    }


def example_figures():
    if "proxy" not in config["arms"] or config["cycles"] < 1:
        return []
    return expand(
        f"{RESULTS}/figures/examples/{{dataset}}/{{model}}.png",
        dataset=config["datasets"],
        model=config["models"],
    )
