"""What each stage reads from the config, per (dataset, model, cycle, arm), and which arm's job
a shared stage belongs to.
"""

from __future__ import annotations

import copy

from .arms import ADDING_KINDS, cam_method, erasing_of, names_of_kind, proxy_settings, record_spec
from .sizes import epoch_scale, scaled_epochs, size_of


def epochs_for(config: dict, cycle: int, dataset: str | None = None) -> int:
    """Epochs of a cycle: the finetune's for cycle 0, else the number or the list's entry; at a
    training size of ``dataset`` (a run dataset, settings/sizes.py) scaled by
    ``training.size_schedule``."""
    if cycle == 0:
        epochs = config["training"]["epochs_finetune"]
    else:
        epochs = config["training"]["epochs"]
        epochs = epochs[cycle - 1] if isinstance(epochs, list) else epochs
    if dataset is None:
        return epochs
    return scaled_epochs(epochs, epoch_scale(config, dataset))


def schedule_span(config: dict, cycle: int, dataset: str | None = None) -> dict:
    """The slice of the learning-rate schedule a training job trains, in epochs.

    ``cycle_mode: continue``: one schedule over the whole run (the finetune and every cycle up
    to ``cycles``, the most a stop rule lets run), each job its own slice: so every job's
    learning rates depend on the run's total length, and editing any cycle's epochs retrains
    the whole run. ``restart``: each job a schedule of its own, from 0 over its own epochs.
    """
    mode = config["training"]["cycle_mode"]
    if mode == "restart":
        return {"mode": mode, "start_epoch": 0, "total_epochs": epochs_for(config, cycle, dataset)}
    return {"mode": mode, "start_epoch": sum(epochs_for(config, c, dataset) for c in range(cycle)),
            "total_epochs": sum(epochs_for(config, c, dataset) for c in range(config["cycles"] + 1))}


# What each stage reads from the config. Snakemake reruns a job when its params
# change, so a stage gets only what changes its outputs: choosing another CAM
# method must not retrain the finetune, and (with cycle_mode: restart) editing the
# epochs of cycle 4 must not retrain cycle 1; with cycle_mode: continue every training
# job's slice of the one schedule (schedule_span) is part of its settings. Settings that change speed but not results (threads, DataLoader
# workers) are passed outside the settings; what only chooses inputs (accumulate,
# retrain_from) shows in the job's input files instead.
TRAIN_MODEL_KEYS = ("timm_name", "weights", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule")
STAGE_SECTIONS = {
    "train": tuple(f"model.{k}" for k in TRAIN_MODEL_KEYS)
    + ("training.augment", "training.precision", "training.channels_last", "training.deterministic"),
    "find_misclassified": ("model.batch_size", "training.precision", "training.channels_last",
                           "training.deterministic", "proxy.selection"),
    "compute_cams": ("model.batch_size", "model.target_layer", "proxy.cam_method", "proxy.fast_path", "proxy.target",
                     "proxy.empty_maps", "training.deterministic", "proxy.maps_source"),
    "mask_and_save": ("proxy.threshold", "proxy.fill", "proxy.random_erase", "proxy.empty_maps"),
    "evaluate": ("model.batch_size", "training.precision", "training.channels_last", "training.deterministic"),
    "measure": ("model.batch_size", "model.target_layer", "training.precision", "training.channels_last",
                "training.deterministic", "evaluation", "maps"),
    "agreement": ("model.batch_size", "model.target_layer", "proxy.cam_method", "proxy.fast_path", "proxy.selection",
                  "training.precision", "training.channels_last", "training.deterministic", "agreement"),
    "faithfulness": ("model.batch_size", "model.target_layer", "proxy.cam_method", "proxy.fast_path",
                     "proxy.threshold", "proxy.fill", "proxy.random_erase", "training.deterministic",
                     "faithfulness"),
}
# Stages that read the training split, and so a training size's rows (absent without sizes).
SIZED_STAGES = (None, "train", "find_misclassified", "agreement")
# ... and epoch_sample and curve_every, which change only the curve points epochs.csv names (stages/train.py).
SPEED_ONLY = {"training": ("threads", "num_workers", "epoch_sample", "curve_every")}
# Keys added after runs existed, left out of a stage's settings at their defaults, so that a run made
# before them is not rerun (Snakemake reruns a job whose params change).
LATER_DEFAULTS = {("proxy", "maps_source"): "separate_pass", ("training", "size_schedule"): "epochs",
                  ("evaluation", "full_split"): "every_cycle", ("proxy", "selection", "source"): "separate_pass",
                  ("proxy", "selection", "order"): "loss"}


def _drop_later_defaults(settings: dict) -> dict:
    for path, default in LATER_DEFAULTS.items():
        *parents, leaf = path
        node = settings
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) == default:
            del node[leaf]
    return settings


def stage_settings(config: dict, dataset: str, model: str, cycle: int = 0, stage: str | None = None,
                   arm: str | None = None) -> dict:
    """The plain settings mapping a stage needs for one (dataset, model, cycle) of ``arm``.

    With ``stage``, only the sections that stage reads (see STAGE_SECTIONS). ``proxy`` is
    the arm's (the ``proxy:`` section with the arm's overrides, see arms.py).
    """
    full = {
        "model": copy.deepcopy(config["models"][model]),
        "training": {k: v for k, v in config["training"].items() if k not in SPEED_ONLY["training"]},
        "proxy": proxy_settings(config, arm),
    }
    full["proxy"]["cam_method"] = cam_method(config, model, arm)
    full["evaluation"] = copy.deepcopy(config.get("evaluation", {}))
    full["faithfulness"] = copy.deepcopy(config.get("faithfulness", {}))
    full["agreement"] = copy.deepcopy(config.get("agreement", {}))
    # every arm's maps measured alike in evaluate: the model's CAM method, not an arm's
    full["maps"] = {"cam_method": cam_method(config, model), "fast_path": config["proxy"]["fast_path"],
                    "target_layer": config["models"][model]["target_layer"]}
    if stage in ("train", None):
        full["epochs"] = epochs_for(config, cycle, dataset)
        full["schedule_span"] = schedule_span(config, cycle, dataset)
    settings = {"names": {"dataset": dataset, "model": model}, "cycle": cycle}
    if (size := size_of(dataset)) is not None and stage in SIZED_STAGES:
        settings["train_size"] = size  # the training rows a size keeps (data/splits.py restrict_to_size)
    if "epochs" in full:
        settings["epochs"] = full.pop("epochs")
        settings["schedule_span"] = full.pop("schedule_span")
        # what its last epoch records for the arms that read it (training/record.py); absent when nothing
        if arm is not None and (spec := record_spec(config, model, arm, cycle)) is not None:
            settings["record"] = spec
        if cycle >= 1 and (erasing := erasing_of(config, arm)) is not None:
            settings["erasing"] = erasing  # the erasing arm's random erasing (absent for every other arm)
    if (stage in ("evaluate", "measure", None) and config.get("evaluation", {}).get("full_split") == "final"
            and cycle < config["cycles"]):  # an intermediate cycle: on the epoch sample of the verdicts' split
        settings["verdict_sample"] = config["training"].get("epoch_sample", 1000)
    if stage is None:
        settings.update(full)
        return _drop_later_defaults(settings)
    sections = STAGE_SECTIONS[stage]
    if stage == "compute_cams" and full["proxy"]["empty_maps"] == "explain_prediction":
        sections += ("proxy.threshold",)  # which maps are empty, and so explained again, depends on it
    for key in sections:
        section, _, leaf = key.partition(".")
        if leaf:
            settings.setdefault(section, {})[leaf] = full[section][leaf]
        else:
            settings[section] = full[section]
    return _drop_later_defaults(copy.deepcopy(settings))


def owner(config: dict, dataset: str, model: str, arm: str, cycle: int, stage: str) -> str:
    """The arm in whose folder the ``stage`` job (find_misclassified or compute_cams) that ``arm``
    uses in ``cycle`` runs: itself, except in cycle 1, where every arm starts from the shared
    finetune and the first arm with the same settings does the work for all."""
    if int(cycle) != 1:
        return arm

    def key(name):
        parts = [stage_settings(config, dataset, model, 1, "find_misclassified", name)]
        if stage == "compute_cams":
            parts.append(stage_settings(config, dataset, model, 1, "compute_cams", name))
        return parts

    adding = names_of_kind(config, *ADDING_KINDS)
    candidates = sorted(adding, key=lambda n: (config["arms"][n]["kind"] != "proxy", adding.index(n)))
    mine = key(arm)
    return next(name for name in candidates if key(name) == mine)
