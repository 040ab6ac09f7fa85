"""Checks of each configured model before any job: its timm name (pretrained tags included,
closest names when misspelled), whether ``weights: hub`` can be had, and the layer CAMs
explain (a module of the model, a 4D map in a layout the CAM code reads, large enough)."""

from __future__ import annotations

import difflib

import torch

HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class ModelCheckError(ValueError):
    """A model entry that would fail a job; the message names the key and the fix."""


def timm_name_problem(key: str, name: str) -> str | None:
    """Why timm cannot build ``name`` (``arch`` or ``arch.pretrained_tag``), with the closest names;
    None when it can."""
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; closest names: {', '.join(close)}" if close else "; list them with timm.list_models('*part*')"
        return f"{key}: timm has no model '{arch}'{hint}"
    if tag and name not in timm.list_pretrained(name):
        tags = timm.list_pretrained(f"{arch}.*")
        hint = f"; its tags: {', '.join(tags[:8])}{' ...' if len(tags) > 8 else ''}" if tags else \
            f"; {arch} has no pretrained weights in timm"
        return f"{key}: timm has no pretrained tag '{tag}' for {arch}{hint}"
    return None


def hub_problem(key: str, name: str) -> str | None:
    """Why ``weights: hub`` cannot load ``name`` here: no pretrained weights in timm, or neither in
    the local cache nor reachable (a quick request, no retries). None when it can."""
    import timm
    from timm.models import get_pretrained_cfg

    arch, _, tag = name.partition(".")
    available = timm.list_pretrained(f"{arch}.*")
    if not available or (tag and name not in available):
        return f"{key}: timm has no pretrained weights for {name}; set weights: none, bundled or a file"
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return f"{key}: timm has no pretrained weights for {name}; set weights: none, bundled or a file"
    if _cached(cfg):
        return None
    cause = _unreachable(cfg)
    if cause is None:
        return None
    where = cfg.hf_hub_id or cfg.url
    return (f"{key}: hub needs timm's pretrained weights for {name} ({where}), which are not in the "
            f"local cache and cannot be fetched here ({cause}). Run once where there is internet with the same "
            "HF_HOME / TORCH_HOME (a shared cache), or set weights to a local file, bundled or none")


def _cached(cfg) -> bool:
    import os

    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for filename in (cfg.hf_hub_filename, *HUB_FILES):
            if filename and isinstance(try_to_load_from_cache(repo, filename), str):
                return True
    if cfg.url:
        from urllib.parse import urlparse

        filename = os.path.basename(urlparse(cfg.url).path)
        if os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", filename)):
            return True
    return bool(cfg.file) and os.path.exists(cfg.file)


def _unreachable(cfg, timeout: float = 5.0) -> str | None:
    """None when the weights' server answers, else the cause (offline mode, DNS, refused...)."""
    import os

    from huggingface_hub import constants

    if cfg.hf_hub_id:
        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
            return "HF_HUB_OFFLINE is set"
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        repo, _, revision = cfg.hf_hub_id.partition("@")
        try:
            get_hf_file_metadata(hf_hub_url(repo, cfg.hf_hub_filename or HUB_FILES[0], revision=revision or None),
                                 timeout=timeout)
            return None
        except Exception as err:  # noqa: BLE001  (network errors come in many types)
            if not cfg.url:
                return f"{type(err).__name__}: {err}"
            first = f"{type(err).__name__}: {err}"
    else:
        first = None
    if not cfg.url:
        return first or "timm's pretrained config names no download address"
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(cfg.url, method="HEAD"), timeout=timeout).close()
        return None
    except Exception as err:  # noqa: BLE001
        return "; ".join(filter(None, [first, f"{type(err).__name__}: {err}"]))


def layer_problem(key: str, model: torch.nn.Module, layer: str, image_size: int) -> str | None:
    """Why CAMs cannot explain ``layer`` of ``model``: not one of its modules (closest names given),
    or no 4D map at ``image_size``. None when they can."""
    from ..models.build import is_vit
    from ..models.cams import CamError, explained_grid

    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
        hint = f"; closest module names: {', '.join(close)}" if close else ""
        return f"{key}: '{layer}' is not a module of {type(model).__name__}{hint}; or set target_layer: auto"
    if is_vit(model):
        return None
    try:
        explained_grid(model, layer, image_size)
    except CamError as err:
        return f"{key}: {err}"
    return None


def cam_problem(config: dict, name: str, model: torch.nn.Module, image_size: int) -> str | None:
    """Why an arm's ``cam_method: cam`` cannot run on model ``name``: the class activation map needs a
    global-average-pool + linear head (a ViT has none: the grid refuses it rather than skip that
    arm for that model) and exists only at the pooled layer. None when it can, or no arm uses it."""
    from ..models.cams import _pool_and_linear, final_feature_layer
    from .arms import cam_method

    users = [a for a in config["arms"] if cam_method(config, name, a) == "cam"]
    if not users:
        return None
    if _pool_and_linear(model) is None:
        return (f"models.{name}: arm {users[0]} uses cam_method: cam, but {config['models'][name]['timm_name']} has "
                "no global-average-pool + linear head, so it has no class activation map; give that arm "
                "gradcam_loss (any layer) or another method, or leave this model out")
    layer = config["models"][name]["target_layer"]
    pooled = final_feature_layer(model, image_size)
    if layer not in ("auto", pooled):
        return (f"models.{name}.target_layer: '{layer}', but arm {users[0]} uses cam_method: cam, whose map exists "
                f"only at the pooled layer ({pooled}); set target_layer: auto or {pooled}, or use gradcam_loss")
    return None


def check_models(config: dict) -> list[str]:
    """Before any job (dry runs too): raise ModelCheckError for a target layer CAMs cannot explain;
    return warnings for maps of 2 x 2 cells or fewer. Builds each model once without weights, and
    not at all when no arm computes CAMs. (Hub weights are checked once the jobs to run are
    known: :func:`hub_problem`, from the workflow's onstart.)"""
    from .arms import ADDING_KINDS, names_of_kind

    messages = []
    if not names_of_kind(config, *ADDING_KINDS) or config["cycles"] < 1:
        return messages
    import timm

    from ..models.build import takes_image_size
    from ..models.cams import auto_target_layer, candidate_layers, explained_grid

    for name, spec in config["models"].items():
        for dataset, ds in config["datasets"].items():
            size = ds["image_size"]
            kwargs = {"img_size": size} if takes_image_size(spec["timm_name"]) else {}
            model = timm.create_model(spec["timm_name"], pretrained=False, num_classes=2, **kwargs).eval()
            if problem := cam_problem(config, name, model, size):
                raise ModelCheckError(problem)
            if spec["target_layer"] == "auto":
                layer = auto_target_layer(model, size)
            else:
                layer = spec["target_layer"]
                if problem := layer_problem(f"models.{name}.target_layer", model, layer, size):
                    raise ModelCheckError(problem)
            h, w = explained_grid(model, layer, size)
            if h * w <= 4:
                usable = [f"{n} ({a}x{b})" for n, (a, b) in candidate_layers(model, size) if a * b > 4]
                messages.append(
                    f"models.{name}: CAMs of {dataset} at {size} px come from a {h}x{w} map (layer {layer}); "
                    f"many will be empty or coarse. Raise datasets.{dataset}.image_size or set "
                    f"models.{name}.target_layer to an earlier layer"
                    + (f": {', '.join(usable[::-1])}" if usable else "")
                    + f" (their faithfulness: python -m proxyattention.stages.layer_pilot --dataset {dataset} "
                      f"--model {name})")
    return messages
