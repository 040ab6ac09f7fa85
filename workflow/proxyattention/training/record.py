"""The training-pass record: what the last epoch of a training job saw of every original training
image, from the training forward and backward the step runs anyway (the seed's "hooks that compute
the activations as they would be computed during training").

Per image, by its index in the training source (added images are recorded too and dropped at the
end): the prediction, the true-class and top probabilities and the loss of the training logits
(train mode, augmented view), the order the epoch met it (-1: not met, e.g. a dropped last batch
of one), and optionally a map at the layer's resolution, written by row index into one device
buffer in float16 after a float32 min-max normalisation:

- ``cam``: the class activation map of the pooled layer, ReLU(W[c] . A) with the linear
  classifier's weights W, c the label (or prediction, ``proxy.target``); the map the separate
  pass's GapLinearCAM computes, here of a forward normalised with batch statistics.
- ``gradcam_loss``: Grad-CAM whose channel weights are the spatial mean of -dL/dA at the layer,
  which is d log p_label / dA: image i's slice of the batch-mean loss's gradient (the positive
  factors 1/B and the grad scaler's scale cancel in the normalised map). Below a BatchNorm in
  train mode that slice also carries the other images' losses through the batch statistics.

Nothing waits on the device inside the loop: every write is an indexed copy on the device and
the host only reads the buffers after the epoch (:meth:`TrainingPassRecorder.result`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MAP_METHODS = ("cam", "gradcam_loss")


class RecordError(RuntimeError):
    """A model that cannot give the recorded map (no GAP + linear head for ``cam``)."""


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1] in float32 (a constant map: 0). Unlike scale_cam_image's
    ``/ (1e-7 + max)`` it divides by the max alone, so the positive factors of a training-pass
    gradient (1/B, the grad scaler's scale, ~1e-5 in all) cancel exactly."""
    flat = cam.flatten(1)
    cam = cam - flat.min(1).values[:, None, None]
    hi = cam.flatten(1).max(1).values[:, None, None]
    return cam / torch.where(hi > 0, hi, torch.ones_like(hi))


class TrainingPassRecorder:
    """Hooks on ``model`` that fill the record during one epoch; :meth:`close` removes them.

    Call :meth:`batch` with the batch's source indices (a device tensor) before its forward,
    :meth:`forward` with the logits and labels after it, :meth:`stepped` after the optimizer
    step (with the grad scaler, before its update) to mark the maps of a skipped step invalid.
    """

    def __init__(self, model: torch.nn.Module, n: int, device, maps: str | None = None,
                 layer: str | None = None, target: str = "label"):
        if maps not in (None, *MAP_METHODS):
            raise RecordError(f"unknown training-pass map method '{maps}'; allowed: {', '.join(MAP_METHODS)}")
        self.n, self.device, self.method, self.target = n, torch.device(device), maps, target
        self.prediction = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        self.true_probability = torch.full((n,), float("nan"), dtype=torch.float32, device=self.device)
        self.confidence = torch.full((n,), float("nan"), dtype=torch.float32, device=self.device)
        self.loss = torch.full((n,), float("nan"), dtype=torch.float32, device=self.device)
        self.met = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        self.valid = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.maps: torch.Tensor | None = None
        self.seen = 0
        self._rows = self._labels = self._activation = None
        self._hooks = []
        self.layer = layer
        if maps is None:
            return
        from ..models.build import channels_last_maps, is_vit

        self._nhwc = channels_last_maps(model)
        self._fold = None
        if is_vit(model):
            from ..models.cams import vit_reshape_transform

            self._fold = vit_reshape_transform(model)
        if maps == "cam":
            from ..models.cams import _pool_and_linear

            head = _pool_and_linear(model)
            if head is None:
                raise RecordError(f"{type(model).__name__} has no global-average-pool + linear head: the training "
                                  "pass has no class activation map (cam) for it; use gradcam_loss")
            pool, self._linear = head
            self._hooks.append(pool.register_forward_pre_hook(self._keep_pooled_input))
        else:
            from ..models.cams import get_layer

            self._hooks.append(get_layer(model, layer).register_forward_hook(self._keep_output))

    # -- hooks -------------------------------------------------------------------------------
    def _as_map(self, a: torch.Tensor) -> torch.Tensor:
        """A layer's output as (B, C, h, w): ViT tokens folded onto the patch grid, NHWC permuted."""
        if self._fold is not None:
            return self._fold(a)
        if self._nhwc:
            return a.permute(0, 3, 1, 2)
        return a

    def _keep_pooled_input(self, module, args):
        self._activation = args[0]

    def _keep_output(self, module, args, output):
        if not torch.is_grad_enabled() or self._rows is None:
            return None
        output.register_hook(self._from_gradient(output))
        return None

    def _from_gradient(self, activation: torch.Tensor):
        rows = self._rows

        def hook(grad: torch.Tensor):
            a = self._as_map(activation.detach()).float()
            g = self._as_map(grad.detach()).float()
            weights = (-g).mean(dim=(2, 3))  # spatial mean of -dL/dA: d log p_label / dA, times 1/B * scale
            self._write(rows, torch.einsum("bk,bkhw->bhw", weights, a))
            return None

        return hook

    # -- per batch ---------------------------------------------------------------------------
    def batch(self, rows: torch.Tensor) -> None:
        self._rows = rows

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Record the batch's predictions and losses (and its ``cam`` maps) from the training logits."""
        rows = self._rows
        b = labels.shape[0]
        logp = F.log_softmax(logits.detach().float(), dim=1)
        top_logp, prediction = logp.max(1)
        true_logp = logp.gather(1, labels[:, None])[:, 0]
        self.prediction.index_copy_(0, rows, prediction)
        self.confidence.index_copy_(0, rows, top_logp.exp())
        self.true_probability.index_copy_(0, rows, true_logp.exp())
        self.loss.index_copy_(0, rows, -true_logp)
        self.met.index_copy_(0, rows, torch.arange(self.seen, self.seen + b, device=self.device))
        self.seen += b
        if self.method == "cam":
            classes = labels if self.target == "label" else prediction
            a = self._activation.detach().float()
            a = a.permute(0, 3, 1, 2) if self._nhwc else a
            self._write(rows, torch.einsum("bk,bkhw->bhw", self._linear.weight.detach().float()[classes], a))
            self._activation = None

    def stepped(self, optimizer, scaler) -> None:
        """Mark the batch's maps invalid when the grad scaler skipped its step (inf/NaN gradients)."""
        if self.method is None or not scaler.is_enabled():
            return
        state = scaler._per_optimizer_states.get(id(optimizer), {})
        found = list(state.get("found_inf_per_device", {}).values())
        if found:
            skipped = sum(f.to(self.device) for f in found) > 0
            rows = self._rows
            self.valid.index_copy_(0, rows, self.valid[rows] & ~skipped)

    def _write(self, rows: torch.Tensor, cam: torch.Tensor) -> None:
        cam = _minmax(cam.clamp_min(0))
        if self.maps is None:
            self.maps = torch.zeros((self.n, *cam.shape[1:]), dtype=torch.float16, device=self.device)
        self.maps.index_copy_(0, rows, cam.to(torch.float16))
        self.valid.index_copy_(0, rows, torch.isfinite(cam).flatten(1).all(1))

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- after the epoch ---------------------------------------------------------------------
    def result(self, n_original: int) -> dict:
        """The record of the original images as numpy arrays (the only read of the device)."""
        keep = slice(0, n_original)
        out = {
            "prediction": self.prediction[keep].cpu().numpy(),
            "confidence": self.confidence[keep].cpu().numpy(),
            "true_probability": self.true_probability[keep].cpu().numpy(),
            "loss": self.loss[keep].cpu().numpy(),
            "met": self.met[keep].cpu().numpy(),
        }
        if self.method is not None:
            maps = self.maps[keep].cpu().numpy() if self.maps is not None else np.zeros((n_original, 0, 0), np.float16)
            out["maps"] = maps
            out["map_valid"] = self.valid[keep].cpu().numpy() & (out["met"] >= 0)
        return out


def write_record(path, record: dict | None, spec: dict | None, source, *, seed, epoch: int, augment: dict) -> None:
    """``training_pass.npz``: the record of the original training images (prepared rows in
    ``index``), with each image's crop offsets and flip in the recorded epoch (``plan``, so a map
    can be brought back to the original image); ``recorded`` False when this job recorded nothing."""
    from ..data.batches import epoch_plan
    from ..data.streams import stream_key
    from ..files.atomic import atomic_path

    arrays = {"recorded": np.array(record is not None)}
    if record is not None:
        n = source.n_original
        arrays.update({"index": source.parts[0][1], "label": source.parts[0][2]})
        plan = epoch_plan(stream_key(seed), epoch, len(source), n, augment["hflip"], augment["crop_padding"])[:n]
        arrays.update({k: v for k, v in record.items() if k != "layer"})
        arrays.update({
            "plan": plan, "crop_padding": np.array(int(augment["crop_padding"])), "epoch": np.array(epoch),
            "method": np.array(spec["maps"] or ""), "layer": np.array(record.get("layer") or ""),
            "target": np.array(spec["target"]),
        })
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
