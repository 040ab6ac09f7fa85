"""Batched prediction under inference mode, shared by the stages that only read a model."""

from __future__ import annotations

import numpy as np
import torch

from ..data.batches import ArraySource, make_loader
from ..runtime.device import Runtime


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, source: ArraySource, mean, std, batch_size: int,
                   runtime: Runtime, num_workers: int = 0) -> np.ndarray:
    """Logits (N, K) as float32 for every image of ``source``, in order, in eval mode."""
    model.eval()
    loader, _ = make_loader(source, mean, std, batch_size, train=False, num_workers=num_workers,
                            pin_memory=runtime.device.type == "cuda", device=runtime.device,
                            channels_last=runtime.channels_last)
    out = []
    try:
        for x, _ in loader:  # the batch moves to the device inside the loader
            with runtime.autocast():
                out.append(model(x).float())  # kept on the device: one copy back at the end, no sync per batch
    except torch.cuda.OutOfMemoryError:
        raise RuntimeError(f"CUDA out of memory predicting batches of {batch_size} images; lower "
                           "models.<name>.batch_size in the config") from None
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), dtype=np.float32)


@torch.inference_mode()
def logits_in_chunks(model: torch.nn.Module, source: ArraySource, mean, std, batch_size: int, runtime: Runtime,
                     chunk: int = 8192):
    """Yield the float32 logits of ``source``'s images in order, ``chunk`` images (a whole number of
    batches) at a time: what predict_logits returns, cut in pieces, so that a caller keeping a few
    numbers per image never holds all N x K logits. The device holds one chunk; it is copied to the
    host once per chunk, not once per batch."""
    model.eval()
    per_chunk = max(1, chunk // batch_size)
    loader, _ = make_loader(source, mean, std, batch_size, train=False, pin_memory=runtime.device.type == "cuda",
                            device=runtime.device, channels_last=runtime.channels_last)
    pending = []
    try:
        for x, _ in loader:
            with runtime.autocast():
                pending.append(model(x).float())
            if len(pending) == per_chunk:
                yield torch.cat(pending).cpu().numpy()
                pending = []
    except torch.cuda.OutOfMemoryError:
        raise RuntimeError(f"CUDA out of memory predicting batches of {batch_size} images; lower "
                           "models.<name>.batch_size in the config") from None
    if pending:
        yield torch.cat(pending).cpu().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy in float64, as torch.nn.functional.cross_entropy computes it."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]
