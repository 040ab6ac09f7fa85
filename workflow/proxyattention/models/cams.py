"""CAM methods: every method of pytorch-grad-cam, plus an exact one-forward-pass fast path.

For a network whose head is global average pooling then one linear layer,
Grad-CAM at the last feature map is the classic CAM: the gradient of logit c
with respect to activation A_k is W[c, k] / (h * w) at every position, so the
Grad-CAM weights are W[c, k] / (h * w) and the map is ReLU(sum_k W[c, k] A_k)
up to a positive factor that min-max normalisation removes. :class:`GapLinearCAM`
computes it from one batched forward pass without a backward pass, and
reproduces the library's post-processing (ReLU, min-max, bilinear resize,
min-max) so its maps equal GradCAM's to float precision.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batches import ArraySource, make_loader
from .build import channels_last_maps, is_vit

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
    # the two maps a training pass can record (training/record.py), here as separate-pass methods:
    "cam": "GradCAM",  # at the pooled layer: the class activation map (GapLinearCAM on the fast path)
    "gradcam_loss": "GradCAM",  # of the class's log-probability: weights from d log p / dA = -dL/dA
}
TRAINING_PASS_METHODS = ("cam", "gradcam_loss")


class CamError(RuntimeError):
    """A CAM that cannot be computed; stops the stage rather than skipping an image."""


def vit_reshape_transform(model: torch.nn.Module):
    """Token sequence (B, prefix + h*w, C) to a feature map (B, C, h, w).

    Drops the class and register tokens (``num_prefix_tokens``) and folds the
    patch tokens back onto the patch grid of this model's image size.
    """
    h, w = model.patch_embed.grid_size
    prefix = model.num_prefix_tokens

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[1] != prefix + h * w:
            raise CamError(
                f"ViT tokens of shape {tuple(tokens.shape)} do not fold onto a {h}x{w} grid "
                f"with {prefix} prefix token(s); choose a target layer inside a transformer block"
            )
        patches = tokens[:, prefix:, :].reshape(tokens.shape[0], h, w, tokens.shape[2])
        return patches.permute(0, 3, 1, 2)

    return reshape


def nhwc_to_nchw(maps: torch.Tensor) -> torch.Tensor:
    if maps.ndim != 4:
        raise CamError(f"expected a (B, H, W, C) feature map, got shape {tuple(maps.shape)}; choose a stage's output")
    return maps.permute(0, 3, 1, 2)


def _pool_and_linear(model: torch.nn.Module):
    """(global_pool, linear) of a GAP + linear head, or None for any other head."""
    from timm.layers import SelectAdaptivePool2d
    from timm.models import DenseNet, EfficientNet, RegNet, ResNet

    if not isinstance(model, (ResNet, EfficientNet, RegNet, DenseNet)):
        return None
    pool = getattr(model, "global_pool", None)
    if pool is None and hasattr(model, "head"):
        pool = getattr(model.head, "global_pool", None)
    linear = model.get_classifier()
    if not isinstance(pool, SelectAdaptivePool2d) or pool.pool_type != "avg" or not isinstance(linear, torch.nn.Linear):
        return None
    return pool, linear


def _map_sizes(model: torch.nn.Module, image_size: int, modules) -> list[tuple[str, tuple[int, int]]]:
    """(name, (h, w)) of each of ``modules`` (name, module) whose output is a 4D map, in execution
    order, from one forward pass of a blank image in eval mode."""
    order: list[tuple[str, tuple[int, int]]] = []
    spatial = slice(1, 3) if channels_last_maps(model) else slice(2, 4)
    hooks = [module.register_forward_hook(
        lambda m, i, o, name=name: order.append((name, tuple(o.shape[spatial])))
        if isinstance(o, torch.Tensor) and o.ndim == 4 else None) for name, module in modules]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return order


def _feature_maps(model: torch.nn.Module, image_size: int) -> list[tuple[str, int]]:
    """(name, h * w) of every module whose output is a 4D map, in execution order,
    outside the pooling and the head."""
    modules = [(name, module) for name, module in model.named_modules()
               if name and name.split(".")[0] not in {"global_pool", "head", "fc", "classifier", "head_drop"}]
    order = [(name, h * w) for name, (h, w) in _map_sizes(model, image_size, modules)]
    if not order:
        raise CamError(f"{type(model).__name__}: no 4D feature map found; name target_layer in the config")
    return order


def final_feature_layer(model: torch.nn.Module, image_size: int) -> str:
    """The module whose output is the final feature map, the one global pooling reads."""
    return _feature_maps(model, image_size)[-1][0]


def auto_target_layer(model: torch.nn.Module, image_size: int) -> str:
    """Name of the layer CAMs are taken from when the config says ``auto``.

    ViTs: the first norm of the last block (the usual choice for Grad-CAM on
    ViTs). Other networks: the last module, in execution order, whose output is
    a 4D feature map larger than 1x1, outside the pooling and the head: the
    final feature map (for MobileNetV3, whose head convolves after pooling, the
    last block; for images so small that the final map is 1x1, an earlier one).
    """
    if is_vit(model):
        return f"blocks.{len(model.blocks) - 1}.norm1"
    order = _feature_maps(model, image_size)
    spatial = [name for name, area in order if area > 1]
    return (spatial or [name for name, _ in order])[-1]


def explained_grid(model: torch.nn.Module, layer_name: str, image_size: int) -> tuple[int, int]:
    """(h, w) of the map a CAM at ``layer_name`` is made from, at ``image_size``: the patch grid for
    a ViT, else the layer's output size."""
    if is_vit(model):
        return tuple(model.patch_embed.grid_size)
    sizes = _map_sizes(model, image_size, [(layer_name, get_layer(model, layer_name))])
    if not sizes:
        raise CamError(f"target_layer '{layer_name}' gives no 4D feature map; choose a convolutional layer")
    return sizes[-1][1]


def get_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise CamError(f"target_layer '{name}' is not a module of {type(model).__name__}; "
                       "use a name from model.named_modules() or auto")
    return modules[name]


class GapLinearCAM:
    """Grad-CAM for GAP + linear heads from one forward pass, equal to the library's GradCAM.

    Same call as pytorch-grad-cam's methods: ``cam(input_tensor, targets)`` with
    ``ClassifierOutputTarget`` targets returns (B, H, W) float32 maps in [0, 1].
    """

    def __init__(self, model: torch.nn.Module):
        head = _pool_and_linear(model)
        if head is None:
            raise CamError(f"{type(model).__name__} has no global-average-pool + linear head; the fast path does not apply")
        self.model = model
        self.weight = head[1].weight

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @torch.inference_mode()
    def __call__(self, input_tensor: torch.Tensor, targets: Sequence) -> np.ndarray:
        classes = torch.as_tensor([t.category for t in targets], device=input_tensor.device)
        features = self.model.forward_features(input_tensor).float()  # (B, K, h, w)
        weights = self.weight.float()[classes]  # (B, K)
        cam = torch.einsum("bk,bkhw->bhw", weights, features).clamp_min_(0)
        cam = _minmax(cam)
        cam = F.interpolate(cam[:, None], size=input_tensor.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return _minmax(cam).cpu().numpy()


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation exactly as pytorch-grad-cam's scale_cam_image."""
    flat = cam.flatten(1)
    lo = flat.min(1).values[:, None, None]
    cam = cam - lo
    hi = cam.flatten(1).max(1).values[:, None, None]
    return cam / (1e-7 + hi)


def fast_path_applies(model: torch.nn.Module, method: str, layer_name: str, image_size: int) -> bool:
    """True where :class:`GapLinearCAM` is exactly Grad-CAM: method gradcam, GAP + linear
    head, and the target layer is the final feature map."""
    if method not in ("gradcam", "cam") or _pool_and_linear(model) is None:
        return False
    return layer_name == final_feature_layer(model, image_size)


def build_cam(model: torch.nn.Module, method: str, layer_name: str, image_size: int, fast_path: bool = True,
              batch_size: int = 32):
    """The CAM object for ``method`` on ``model`` at ``layer_name``: the fast path where it is exact."""
    if method not in CAM_METHODS:
        raise CamError(f"unknown CAM method '{method}'; allowed: {', '.join(CAM_METHODS)}")
    if method == "cam":  # the class activation map exists only at the pooled layer of a GAP + linear head
        if _pool_and_linear(model) is None:
            raise CamError(f"{type(model).__name__} has no global-average-pool + linear head, so no class "
                           "activation map (cam); use gradcam or gradcam_loss")
        layer_name = final_feature_layer(model, image_size)
    if fast_path and fast_path_applies(model, method, layer_name, image_size):
        return GapLinearCAM(model)
    import pytorch_grad_cam as pgc

    cls = getattr(pgc, CAM_METHODS[method])
    layer = get_layer(model, layer_name)
    kwargs = {}
    if is_vit(model):
        kwargs["reshape_transform"] = vit_reshape_transform(model)
    elif channels_last_maps(model):
        kwargs["reshape_transform"] = nhwc_to_nchw
    if method == "ablationcam" and is_vit(model):
        kwargs["ablation_layer"] = pgc.AblationLayerVit()
    cam = cls(model=model, target_layers=[layer], **kwargs)
    if hasattr(cam, "batch_size"):
        cam.batch_size = batch_size
    cam.log_probability = method == "gradcam_loss"  # compute_maps explains log p(class), not the logit
    return cam


class ClassTarget:
    """The logit of one class: pytorch-grad-cam's ClassifierOutputTarget without importing the
    library (its import takes seconds), for the fast path."""

    def __init__(self, category: int):
        self.category = category

    def __call__(self, model_output):
        return model_output[self.category] if model_output.ndim == 1 else model_output[:, self.category]


class LogProbabilityTarget:
    """The log-probability of one class (log-softmax of the logits): Grad-CAM of it has the channel
    weights of ``gradcam_loss``, -dL/dA for the cross-entropy loss L of that class."""

    def __init__(self, category: int):
        self.category = category

    def __call__(self, model_output):
        return torch.log_softmax(model_output, dim=-1)[..., self.category]


def release_batch(cam, model) -> None:
    """Drop what a library CAM keeps of the last batch: its outputs (with their graph, kept by
    ``backward(retain_graph=True)``), activations and gradients, and the parameters' gradients,
    so the next batch does not run with two batches in memory."""
    if isinstance(cam, GapLinearCAM):
        return
    if hasattr(cam, "outputs"):
        cam.outputs = None
    held = getattr(cam, "activations_and_grads", None)
    if held is not None:
        held.activations, held.gradients = [], []
    model.zero_grad(set_to_none=True)


def compute_maps(cam, model, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Maps (B, H, W) float32 for ``images`` explaining ``classes``; raise CamError on failure."""
    if isinstance(cam, GapLinearCAM):
        targets = [ClassTarget(int(c)) for c in classes]
    elif getattr(cam, "log_probability", False):
        targets = [LogProbabilityTarget(int(c)) for c in classes]
    else:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in classes]
    try:
        maps = cam(input_tensor=images, targets=targets)
    except CamError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise CamError(f"CUDA out of memory computing {type(cam).__name__} maps for a batch of {len(classes)} images "
                       f"at {tuple(images.shape[-2:])} px; lower models.<name>.batch_size in the config (a CAM "
                       "holds the batch's activations and gradients)") from None
    except Exception as err:
        raise CamError(f"{type(cam).__name__} failed on {type(model).__name__}: {type(err).__name__}: {err}") from err
    finally:
        release_batch(cam, model)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != (len(classes),) + tuple(images.shape[-2:]):
        raise CamError(f"{type(cam).__name__} returned maps of shape {maps.shape}, expected {(len(classes),) + tuple(images.shape[-2:])}")
    if not np.isfinite(maps).all():
        raise CamError(f"{type(cam).__name__} returned non-finite values on {type(model).__name__}")
    return maps


def release(cam) -> None:
    """Remove the library's hooks: what ``with cam:`` does on exit, without its ``__exit__``,
    which prints and swallows an IndexError raised inside the block."""
    hooks = getattr(cam, "activations_and_grads", None)
    if hooks is not None:
        hooks.release()


def explain(cam, model, runtime, images, rows: np.ndarray, classes: np.ndarray, mean, std, batch_size: int,
            out: np.ndarray) -> None:
    """Write the float16 map of each (row, class) into ``out``; every row gets its map or this raises."""
    loader, _ = make_loader(ArraySource([(images, rows, classes)]), mean, std, batch_size, device=runtime.device,
                            channels_last=runtime.channels_last)
    start = 0
    batches = iter(loader)
    while True:
        try:  # data loading outside the library's code: its errors surface as they are
            x, targets = next(batches)  # moved to the device here
        except StopIteration:
            break
        except torch.cuda.OutOfMemoryError:
            raise CamError(f"CUDA out of memory moving a batch of {batch_size} images to the device; lower "
                           "models.<name>.batch_size in the config") from None
        batch = compute_maps(cam, model, x, targets.tolist())
        out[start : start + len(batch)] = batch.astype(np.float16)
        start += len(batch)
    if start != len(rows):
        raise CamError(f"computed {start} maps for {len(rows)} selected images; no map may be left out")


def candidate_layers(model, image_size: int, named: str | None = None) -> list[tuple[str, tuple[int, int]]]:
    """(layer, (h, w) of its map at ``image_size``) for each stage output timm reports, and the
    config's own layer, in execution order (duplicates once)."""
    names = [info["module"] for info in getattr(model, "feature_info", [])
             if isinstance(info, dict) and info.get("module")]
    if named and named != "auto" and named not in names:
        names.append(named)
    out = []
    for name in dict.fromkeys(names):
        try:
            out.append((name, tuple(int(v) for v in explained_grid(model, name, image_size))))
        except Exception:  # a module without a 4D output (a ViT's norm): not a candidate
            continue
    return out
