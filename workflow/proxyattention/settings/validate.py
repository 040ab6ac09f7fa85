"""Loading and checking the workflow configuration: the one entry point, on top of the
schema, the arms, the stage settings and the model and source checks.

The JSON schema (``workflow/schemas/config.schema.yaml``) documents every option
and fills in defaults; :func:`check_config` adds the checks a schema cannot do
(paths exist, timm knows the model, the CAM method fits it), so a bad config
stops the run before any job starts, with one message naming the key and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from .arms import cam_method, normalise
from .schema import SCHEMA, ConfigError, expand_home, explain


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
    config["arms"] = normalise(config["arms"])
    expand_home(config)
    return config


def load_config(*paths: str | os.PathLike) -> dict:
    """Read, validate and check a config file, or several merged as ``snakemake --configfile A B``
    merges them (a later file's keys update the earlier's, mappings key by key)."""
    from .arms import _merge

    config = {}
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            with open(path) as stream:  # the error's mark then names the file, with its line and column
                config = _merge(config, yaml.safe_load(stream) or {})
        except yaml.YAMLError as err:
            hint = "; indent with spaces, not tabs" if "\t" in path.read_text() else ""
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())}){hint}") from None
    validate(config)
    check_config(config)
    return config


def check_config(config: dict, base: str | os.PathLike = ".") -> None:
    """Checks the schema cannot express; raise ConfigError naming the key."""
    from ..models.build import BUNDLED, transformer
    from ..models.cams import CAM_METHODS
    from .arms import check as check_arms

    check_arms(config)
    if config.get("evaluation", {}).get("full_split") == "final" and config["training"].get("epoch_sample") == 0:
        raise ConfigError("evaluation.full_split: final evaluates the finetune and the cycles before the last on "
                          "training.epoch_sample's images of the verdicts' split, and epoch_sample is 0 (none); set "
                          "epoch_sample (e.g. 1000; training.curve_every: 0 then keeps only the evaluations' points) "
                          "or full_split: every_cycle")
    if config["training"]["cycle_mode"] == "continue" and config["training"]["retrain_from"] == "pretrained":
        raise ConfigError("training.retrain_from: pretrained starts each cycle from the pretrained weights, while "
                          "training.cycle_mode: continue carries one run (weights and optimizer) across cycles; set "
                          "cycle_mode: restart, or retrain_from: previous")

    for name, ds in config["datasets"].items():
        if ds["source"] == "torchvision":
            from ..sources.torchvision import check as check_torchvision

            if problem := check_torchvision(f"datasets.{name}", ds, base):
                raise ConfigError(problem)
        elif not Path(base, ds["path"]).exists():
            where = ("" if Path(ds["path"]).is_absolute()
                     else f" (a relative path is read from the folder the workflow runs in, {Path(base).resolve()})")
            raise ConfigError(
                f"datasets.{name}.path: {ds['path']} does not exist{where}; point it at the {ds['source']} source"
            )
        else:
            from ..sources import layout_problem

            if problem := layout_problem(ds, base):
                raise ConfigError(f"datasets.{name}.path: {problem}")
        if ds.get("train_sizes") and ds.get("train_subset"):
            raise ConfigError(f"datasets.{name}: train_sizes and train_subset both choose the training images; "
                              "keep train_sizes (its largest size is the subset) and remove train_subset")
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
            if method == "fullgrad" and transformer(model["timm_name"]):
                raise ConfigError(
                    f"{where}: fullgrad needs convolution biases and does not fit the ViT "
                    f"'{model['timm_name']}'; choose gradcam, gradcam++, scorecam or another method"
                )
    epochs = config["training"]["epochs"]
    if isinstance(epochs, list) and len(epochs) < config["cycles"]:
        raise ConfigError(
            f"training.epochs: a list of {len(epochs)} entries but cycles is {config['cycles']}; give one entry per cycle"
        )
