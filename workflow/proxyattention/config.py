"""Loading and checking the workflow configuration.

The JSON schema (``workflow/schemas/config.schema.yaml``) documents every option
and fills in defaults; :func:`check_config` adds the checks a schema cannot do
(paths exist, timm knows the model, the CAM method fits it), so a bad config
stops the run before any job starts, with one message naming the key and the fix.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

# Methods that need gradients of a target class; the others (eigencam, kpcacam) do not.
CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "fullgrad": "FullGrad",
    "gradcamelementwise": "GradCAMElementWise",
    "kpcacam": "KPCA_CAM",
}


class ConfigError(ValueError):
    """A configuration mistake; the message names the key and what is allowed."""


def validate(config: dict, schema: str | os.PathLike = SCHEMA) -> dict:
    """Validate ``config`` against the schema in place, filling defaults; return it.

    The first error is reported in one line naming the key and what is allowed;
    defaults are then filled by ``snakemake.utils.validate``, the same call the
    Snakefile makes.
    """
    import jsonschema
    from snakemake.utils import validate as sm_validate

    schema_doc = yaml.safe_load(Path(schema).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema_doc).iter_errors(config))
    if error is not None:
        raise ConfigError(explain(error))
    sm_validate(config, str(schema), set_default=True)
    from .arms import normalise

    config["arms"] = normalise(config["arms"])
    expand_home(config)
    return config


def expand_home(config: dict) -> None:
    """``~`` in the results folder and in dataset, mask and weights paths means the home folder,
    as in a shell (it would otherwise become a folder named ``~`` in the working folder)."""
    config["results"] = os.path.expanduser(config["results"])
    for ds in config["datasets"].values():
        for key in ("path", "masks"):
            if isinstance(ds.get(key), str):
                ds[key] = os.path.expanduser(ds[key])
    for model in config["models"].values():
        if model.get("weights") not in (None, "hub", "none", "bundled"):
            model["weights"] = os.path.expanduser(model["weights"])


def explain(error) -> str:
    """One line for a jsonschema ValidationError: the key, the problem, what is allowed."""
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    allowed = ""
    if "enum" in schema:
        allowed = f"; allowed: {', '.join(map(str, schema['enum']))}"
    elif error.validator == "additionalProperties":
        allowed = f"; allowed keys here: {', '.join(sorted(schema.get('properties', {})))}"
    elif "description" in schema:
        allowed = f" ({schema['description'].strip()})"
    return f"invalid config at '{key}': {error.message}{allowed}"


def load_config(path: str | os.PathLike) -> dict:
    """Read, validate and check a config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    validate(config)
    check_config(config)
    return config


def check_config(config: dict, base: str | os.PathLike = ".") -> None:
    """Checks the schema cannot express; raise ConfigError naming the key."""
    from .arms import check as check_arms
    from .models import BUNDLED

    check_arms(config)
    if config["training"]["cycle_mode"] == "continue" and config["training"]["retrain_from"] == "pretrained":
        raise ConfigError("training.retrain_from: pretrained starts each cycle from the pretrained weights, while "
                          "training.cycle_mode: continue carries one run (weights and optimizer) across cycles; set "
                          "cycle_mode: restart, or retrain_from: previous")

    for name, ds in config["datasets"].items():
        if ds["source"] == "torchvision":
            from .torchvision_source import check as check_torchvision

            if problem := check_torchvision(f"datasets.{name}", ds, base):
                raise ConfigError(problem)
        elif not Path(base, ds["path"]).exists():
            raise ConfigError(
                f"datasets.{name}.path: {ds['path']} does not exist; point it at the {ds['source']} source"
            )
        if ds.get("masks") is not None and ds["source"] in ("idx", "csv"):
            fix = "give the CSV a 'mask' column instead" if ds["source"] == "csv" else "an idx source has no masks"
            raise ConfigError(f"datasets.{name}.masks: a {ds['source']} source takes no masks key; {fix}")
        if ds.get("masks") is not None and ds["source"] == "imagefolder" and not Path(base, ds["masks"]).is_dir():
            raise ConfigError(f"datasets.{name}.masks: {ds['masks']} does not exist; point it at a folder that "
                              "mirrors the image tree (masks/<split>/<class>/<stem>.png)")
    from .model_checks import timm_name_problem

    for name, model in config["models"].items():
        if problem := timm_name_problem(f"models.{name}.timm_name", model["timm_name"]):
            raise ConfigError(problem)
        weights = model["weights"]
        if weights == "bundled" and model["timm_name"] not in BUNDLED:
            hint = (" (the bundled file is a TensorFlow port: SAME padding, BatchNorm eps 1e-3, inputs in [-1, 1];"
                    " set timm_name: tf_efficientnet_lite0)") if model["timm_name"] == "efficientnet_lite0" else ""
            raise ConfigError(
                f"models.{name}.weights: 'bundled' weights exist only for timm's {', '.join(BUNDLED)}{hint}; "
                "use hub, none or a file path"
            )
        if weights not in ("hub", "none", "bundled") and not Path(base, weights).exists():
            raise ConfigError(f"models.{name}.weights: file {weights} does not exist; use hub, none, bundled or an existing file")
        for arm in [None, *config["arms"]]:
            method = cam_method(config, name, arm)
            where = f"models.{name}.cam_method" if arm is None else f"arms.{arm}.cam_method (for model {name})"
            if method not in CAM_METHODS:
                raise ConfigError(f"{where}: unknown method '{method}'; allowed: inherit, {', '.join(CAM_METHODS)}")
            if method == "fullgrad" and is_vit_name(model["timm_name"]):
                raise ConfigError(
                    f"{where}: fullgrad needs convolution biases and does not fit the ViT "
                    f"'{model['timm_name']}'; choose gradcam, gradcam++, scorecam or another method"
                )
    epochs = config["training"]["epochs"]
    if isinstance(epochs, list) and len(epochs) < config["cycles"]:
        raise ConfigError(
            f"training.epochs: a list of {len(epochs)} entries but cycles is {config['cycles']}; give one entry per cycle"
        )


def is_vit_name(timm_name: str) -> bool:
    """Transformers timm builds for any image size (img_size=...): ViT family and Swin."""
    return timm_name.split("_")[0] in {"vit", "deit", "deit3", "beit", "eva", "eva02", "flexivit", "swin", "swinv2"}


def cam_method(config: dict, model: str, arm: str | None = None) -> str:
    from .arms import cam_method as arm_cam_method

    return arm_cam_method(config, model, arm)


def epochs_for(config: dict, cycle: int) -> int:
    """Epochs of a cycle: the finetune's for cycle 0, else the number or the list's entry."""
    if cycle == 0:
        return config["training"]["epochs_finetune"]
    epochs = config["training"]["epochs"]
    return epochs[cycle - 1] if isinstance(epochs, list) else epochs


def schedule_span(config: dict, cycle: int) -> dict:
    """The slice of the learning-rate schedule a training job trains, in epochs.

    ``cycle_mode: continue``: one schedule over the whole run (the finetune and every cycle up
    to ``cycles``, the most a stop rule lets run), each job its own slice: so every job's
    learning rates depend on the run's total length, and editing any cycle's epochs retrains
    the whole run. ``restart``: each job a schedule of its own, from 0 over its own epochs.
    """
    mode = config["training"]["cycle_mode"]
    if mode == "restart":
        return {"mode": mode, "start_epoch": 0, "total_epochs": epochs_for(config, cycle)}
    return {"mode": mode, "start_epoch": sum(epochs_for(config, c) for c in range(cycle)),
            "total_epochs": sum(epochs_for(config, c) for c in range(config["cycles"] + 1))}


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
                     "proxy.empty_maps", "training.deterministic"),
    "mask_and_save": ("proxy.threshold", "proxy.fill", "proxy.random_erase", "proxy.empty_maps"),
    "evaluate": ("model.batch_size", "model.target_layer", "training.precision", "training.channels_last",
                 "training.deterministic", "evaluation", "maps"),
}
SPEED_ONLY = {"training": ("threads", "num_workers")}


def stage_settings(config: dict, dataset: str, model: str, cycle: int = 0, stage: str | None = None,
                   arm: str | None = None) -> dict:
    """The plain settings mapping a stage needs for one (dataset, model, cycle) of ``arm``.

    With ``stage``, only the sections that stage reads (see STAGE_SECTIONS). ``proxy`` is
    the arm's (the ``proxy:`` section with the arm's overrides, see arms.py).
    """
    from .arms import proxy_settings

    full = {
        "model": copy.deepcopy(config["models"][model]),
        "training": {k: v for k, v in config["training"].items() if k not in SPEED_ONLY["training"]},
        "proxy": proxy_settings(config, arm),
    }
    full["proxy"]["cam_method"] = cam_method(config, model, arm)
    full["evaluation"] = copy.deepcopy(config.get("evaluation", {}))
    # every arm's maps measured alike in evaluate: the model's CAM method, not an arm's
    full["maps"] = {"cam_method": cam_method(config, model), "fast_path": config["proxy"]["fast_path"],
                    "target_layer": config["models"][model]["target_layer"]}
    if stage in ("train", None):
        full["epochs"] = epochs_for(config, cycle)
        full["schedule_span"] = schedule_span(config, cycle)
    settings = {"names": {"dataset": dataset, "model": model}, "cycle": cycle}
    if "epochs" in full:
        settings["epochs"] = full.pop("epochs")
        settings["schedule_span"] = full.pop("schedule_span")
    if stage is None:
        settings.update(full)
        return settings
    sections = STAGE_SECTIONS[stage]
    if stage == "compute_cams" and full["proxy"]["empty_maps"] == "explain_prediction":
        sections += ("proxy.threshold",)  # which maps are empty, and so explained again, depends on it
    for key in sections:
        section, _, leaf = key.partition(".")
        if leaf:
            settings.setdefault(section, {})[leaf] = full[section][leaf]
        else:
            settings[section] = full[section]
    return settings
