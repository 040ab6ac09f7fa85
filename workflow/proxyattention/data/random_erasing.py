"""Random erasing of training images (Zhong et al. 2020), as torchvision's ``RandomErasing`` does
it: the ``erasing`` arm's augmentation, the positive control of a study (where published erasing
gains come from).

Each training image, in each epoch, is erased with probability ``p``: a rectangle of a uniform
fraction ``scale`` of the image's area, with an aspect ratio drawn log-uniformly from ``ratio``,
``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``, tried up to ten times until
it fits (``h < H`` and ``w < W``; no erasing when no try fits), at a uniform place; its pixels set
to 0 after normalisation (torchvision's default ``value=0`` behind ``Normalize``: the model's mean
colour). The same algorithm as ``torchvision.transforms.RandomErasing.get_params``, drawn for a
whole epoch at once from the workflow's streams (keyed by seed, cycle, purpose and epoch:
streams.py), so a run repeats whatever the number of gather threads, and applied after the crop
and flip (torchvision's order: behind ToTensor and Normalize) by :class:`batches.DeviceTransform`
on the batch's device.

A plan row is (top, left, height, width): height 0 means the image is not erased.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .streams import ERASE, generator

DEFAULTS = {"p": 0.5, "scale": [0.02, 0.33], "ratio": [0.3, 3.3]}
ATTEMPTS = 10  # torchvision's


def settings_of(spec: dict | None) -> dict | None:
    """The arm's ``erasing`` mapping with torchvision's defaults filled in (None: no erasing)."""
    if spec is None:
        return None
    return {**DEFAULTS, **{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in spec.items()}}


def draw_boxes(rng: np.random.Generator, n: int, height: int, width: int, p: float, scale, ratio) -> np.ndarray:
    """(n, 4) int64 boxes (top, left, height, width), height 0 where an image is not erased."""
    area = height * width
    apply = rng.random(n) < p
    fraction = rng.uniform(scale[0], scale[1], size=(n, ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, ATTEMPTS)))
    h = np.round(np.sqrt(area * fraction * aspect)).astype(np.int64)  # Python's round(): half to even, as np.round
    w = np.round(np.sqrt(area * fraction / aspect)).astype(np.int64)
    fits = (h < height) & (w < width)
    first = fits.argmax(axis=1)
    found = fits[np.arange(n), first] & apply
    h, w = h[np.arange(n), first], w[np.arange(n), first]
    u_top, u_left = rng.random(n), rng.random(n)
    boxes = np.zeros((n, 4), dtype=np.int64)
    boxes[:, 0] = np.floor(u_top * (height - h + 1)).astype(np.int64)  # uniform in 0 .. H - h
    boxes[:, 1] = np.floor(u_left * (width - w + 1)).astype(np.int64)
    boxes[:, 2], boxes[:, 3] = h, w
    boxes[~found] = 0
    return boxes


def epoch_boxes(seed, epoch: int, n: int, height: int, width: int, erasing: dict) -> np.ndarray:
    """The boxes of every image of a training source in one epoch, by its index."""
    return draw_boxes(generator(seed, ERASE, epoch), n, height, width, erasing["p"], erasing["scale"],
                      erasing["ratio"])


def erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``x`` (B, H, W, C) float (channels last in memory, as the device transform holds it) with
    each image's box (B, 4: top, left, height, width) set to 0."""
    b, h, w, _ = x.shape
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    top, left, bh, bw = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]
    in_rows = (rows >= top) & (rows < top + bh)  # (B, H)
    in_cols = (cols >= left) & (cols < left + bw)  # (B, W)
    inside = in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(inside[..., None], 0.0)
