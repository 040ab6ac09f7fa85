"""Where every file of the workflow lives: the one place paths are built.

``workflow/rules/common.smk`` turns these into Snakemake patterns and input
functions; the ``proxyattention`` command line uses them to run one stage by hand.
"""

from __future__ import annotations

FINETUNE = "finetune"

KEYS = ["dataset", "model", "arm", "seed", "cycle"]  # column order of summary.csv (stages/aggregate.py)
CELL = ["dataset", "model", "seed", "arm", "cycle"]  # order of a grid cell (grid below)

PREPARED = "{results}/prepared/{dataset}"
RUN = "{results}/runs/{dataset}/{model}/seed{seed}/{arm}/cycle{cycle}"


def prepared_dir(results: str, dataset: str) -> str:
    return PREPARED.format(results=results, dataset=dataset)


def run_dir(results: str, dataset: str, model: str, seed, arm: str, cycle) -> str:
    return RUN.format(results=results, dataset=dataset, model=model, seed=seed, arm=arm, cycle=cycle)


def group_name(dataset: str, model: str, seed, arm: str, cycle) -> str:
    """The cluster job (Snakemake group) of one cycle of one arm: ``dataset.model.seedS.arm.cycleC``
    (the finetune and its evaluation: ``arm`` finetune, cycle 0); a training size's dataset
    ``name/n20pc`` as ``name+n20pc`` (no ``/`` in a job name, no ``+`` in a dataset's)."""
    return f"{dataset.replace('/', '+')}.{model}.seed{seed}.{arm}.cycle{cycle}"


def previous_run_dir(results: str, dataset: str, model: str, seed, arm: str, cycle) -> str:
    """The run folder of the cycle before ``cycle``: cycle 0 is the shared finetune."""
    cycle = int(cycle)
    return run_dir(results, dataset, model, seed, FINETUNE if cycle == 1 else arm, cycle - 1)


def metrics_before(results: str, dataset: str, model: str, seed, arm: str, cycle) -> list[str]:
    """metrics.json of every cycle before ``cycle``, cycle 0 first."""
    return [f"{run_dir(results, dataset, model, seed, FINETUNE if c == 0 else arm, c)}/metrics.json"
            for c in range(int(cycle))]


def erased_for_training(results: str, accumulate: bool, adds: bool, dataset: str, model: str, seed, arm: str,
                        cycle) -> list[str]:
    """erased.npz files a retrain adds to the originals: none for an arm that adds nothing
    (``adds`` false: baseline); this cycle's, and with ``accumulate`` every earlier cycle's,
    for the arms that add images (proxy, random_erase, duplicate)."""
    if not adds:
        return []
    cycle = int(cycle)
    first = 1 if accumulate else cycle
    return [f"{run_dir(results, dataset, model, seed, arm, c)}/erased.npz" for c in range(first, cycle + 1)]


def grid(config: dict) -> list[tuple]:
    """Every (dataset, model, seed, arm, cycle) cell; cycle 0 under the shared finetune. A dataset
    with training sizes is one dataset per size, ``name/size`` (settings/sizes.py)."""
    from ..settings.sizes import run_datasets

    cells = []
    for dataset in run_datasets(config):
        for model in config["models"]:
            for seed in config["seeds"]:
                cells.append((dataset, model, seed, FINETUNE, 0))
                cells += [(dataset, model, seed, arm, c) for arm in config["arms"] for c in range(1, config["cycles"] + 1)]
    return cells


def describe_grid(config: dict, configfiles=()) -> str:
    """One line saying what a run will compute: datasets x models x arms x seeds x cycles."""
    from ..settings.sizes import run_datasets, size_names

    parts = [(key, list(config[key])) for key in ("datasets", "models", "arms", "seeds")]
    sizes = [f"{name}/{s}" for name, spec in config["datasets"].items() for s in size_names(spec)]
    if sizes:
        parts.insert(1, ("training sizes", sizes))
    text = " x ".join(f"{len(v)} {k if len(v) != 1 else k[:-1]} ({', '.join(map(str, v))})" for k, v in parts)
    n = len(run_datasets(config)) * len(config["models"]) * len(config["seeds"])
    import os

    def count(k: int, noun: str) -> str:
        return f"{k} {noun}{'' if k == 1 else 's'}"

    source = f" from {', '.join(os.path.relpath(f) for f in configfiles)}" if configfiles else ""
    return (f"proxyattention grid{source}: {text} x {count(config['cycles'], 'cycle')} = "
            f"{count(n * len(config['arms']) * config['cycles'], 'arm-cycle')} after {count(n, 'shared finetune')}; "
            f"results in {config['results']}/")


def verdict_warning(config: dict) -> str | None:
    """What a grid cannot give, said at the start of its run: with fewer seeds than a verdict needs
    (analysis/verdicts.py MIN_PAIRS), no comparison gets an interval, an MDE or a verdict; with no
    control or a single arm, nothing is compared."""
    from ..analysis.verdicts import MIN_PAIRS

    n = len(config["seeds"])
    if len(config["arms"]) > 1 and n < MIN_PAIRS:
        return (f"{n} seed{'' if n == 1 else 's'}: no comparison will get an interval, a detectable effect or a "
                f"verdict (each needs at least {MIN_PAIRS} seeds, paired); the tables and figures will show the "
                f"per-seed differences only. Add seeds to answer a question")
    return None


def mask_seed(seed, cycle) -> list[int]:
    """The stream of a cycle's random draws in mask-and-save: (seed, cycle), as training's."""
    return [int(seed), int(cycle)]
