"""Erasing pixels: masks from a map's top activations, fills, the random control's masks,
and the share of pixels an erasure changed.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..files.artifacts import empty_maps


def threshold_masks(maps: np.ndarray, mode: str, value: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (N, H, W) of the pixels to erase, and the threshold used for each map.

    ``quantile``: pixels strictly above the per-map ``value`` quantile;
    ``value``: pixels strictly above ``value``; ``topk_area``: exactly
    round((1 - value) * H * W) pixels, highest first, ties broken by position.
    """
    n, h, w = maps.shape
    flat = maps.reshape(n, h * w)  # (not -1: no map at all, e.g. nothing selected, is a shape too)
    uncovered = np.isnan(flat)
    if uncovered.any():  # training-pass maps: thresholds over the covered pixels, uncovered never masked
        return _threshold_covered(maps, mode, value, uncovered)
    if mode == "quantile":
        thresholds = np.quantile(flat, value, axis=1) if n else np.zeros(0)
        masks = flat > thresholds[:, None]
    elif mode == "value":
        thresholds = np.full(n, value, dtype=np.float64)
        masks = flat > value
    elif mode == "topk_area":
        k = int(round((1 - value) * h * w))
        order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
        masks = np.zeros_like(flat, dtype=bool)
        np.put_along_axis(masks, order, True, axis=1)
        thresholds = flat[np.arange(n), order[:, -1]] if k and n else np.zeros(n)
    else:
        raise ValueError(f"unknown threshold mode '{mode}'; allowed: quantile, value, topk_area")
    # A constant map ranks no pixel above another: it erases nothing, whatever the mode.
    masks[empty_maps(maps)] = False
    return masks.reshape(n, h, w), np.asarray(thresholds, dtype=np.float64)


def _threshold_covered(maps: np.ndarray, mode: str, value: float, uncovered: np.ndarray):
    """threshold_masks over each map's covered (not NaN) pixels: quantiles of the covered pixels,
    ``topk_area`` round((1 - value) * covered) pixels; a map covering nothing masks nothing."""
    import warnings

    n, h, w = maps.shape
    flat = maps.reshape(n, h * w)  # (not -1: no map at all, e.g. nothing selected, is a shape too)
    covered = (~uncovered).sum(1)
    if mode == "quantile":
        with warnings.catch_warnings():  # a map with no covered pixel: its threshold is NaN, masking nothing
            warnings.simplefilter("ignore", RuntimeWarning)
            thresholds = np.nanquantile(flat, value, axis=1)
        masks = flat > thresholds[:, None]
    elif mode == "value":
        thresholds = np.full(n, value, dtype=np.float64)
        masks = flat > value
    elif mode == "topk_area":
        k = np.rint((1 - value) * covered).astype(np.int64)
        order = np.argsort(np.where(uncovered, np.inf, -flat), axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :].repeat(n, 0), axis=1)
        masks = ranks < k[:, None]
        last = flat[np.arange(n), order[np.arange(n), np.maximum(k - 1, 0)]] if n else np.zeros(0)
        thresholds = np.where(k > 0, last, 0.0)
    else:
        raise ValueError(f"unknown threshold mode '{mode}'; allowed: quantile, value, topk_area")
    masks &= ~uncovered
    masks[empty_maps(maps)] = False
    return masks.reshape(n, h, w), np.asarray(thresholds, dtype=np.float64)


def covered_fraction(maps: np.ndarray) -> np.ndarray:
    """Per map (N, H, W): the share of its pixels the map covers (not NaN; 1 for a separate pass's)."""
    if not len(maps):
        return np.zeros(0)
    return (~np.isnan(np.asarray(maps, dtype=np.float32))).reshape(len(maps), -1).mean(1)


def empty_masks(maps: np.ndarray, threshold: dict, batch_size: int = 256) -> np.ndarray:
    """True for each map whose mask under ``threshold`` (``proxy.threshold``) holds no pixel:
    a constant map, or a top plateau that covers the quantile (``quantile`` keeps pixels
    strictly above it, so ties at the top erase nothing). Such an image is "empty" for
    ``proxy.empty_maps``, whatever made it so."""
    out = np.zeros(len(maps), dtype=bool)
    for start in range(0, len(maps), batch_size):
        masks, _ = threshold_masks(maps[start : start + batch_size], threshold["mode"], threshold["value"])
        out[start : start + batch_size] = ~masks.reshape(len(masks), -1).any(1)
    return out


def changed_fraction(originals: np.ndarray, erased: np.ndarray) -> np.ndarray:
    """Per image (N, H, W, 3): the fraction of pixels whose value changed in any channel (a black
    fill over black background changes none of the pixels its mask covers)."""
    if not len(originals):
        return np.zeros(0)
    return (originals != erased).any(axis=-1).reshape(len(originals), -1).mean(1)


def fill_values(images: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """What masked pixels become, per pixel (N, H, W, 3) uint8, for mean/blur/noise."""
    if mode == "mean":
        means = np.rint(images.mean(axis=(1, 2), keepdims=True)).astype(np.uint8)
        return np.broadcast_to(means, images.shape)
    if mode == "noise":
        return rng.integers(0, 256, size=images.shape, dtype=np.uint8)
    if mode == "blur":
        k = max(3, (images.shape[1] // 8) | 1)
        return np.stack([cv2.GaussianBlur(im, (k, k), 0) for im in images])
    raise ValueError(f"unknown fill mode '{mode}'")


def erase(images: np.ndarray, maps: np.ndarray, masks: np.ndarray, fill: dict,
          rng: np.random.Generator) -> np.ndarray:
    """Paint masked pixels of uint8 images (N, H, W, 3); ``blend`` dims by (1 - lambda * cam).

    Only the masked pixels are touched; only ``blend`` needs floating point.
    """
    out = np.array(images, dtype=np.uint8, copy=True)
    if fill["mode"] == "black":
        out[masks] = 0
    elif fill["mode"] == "blend":
        factor = (1.0 - fill["blend_lambda"] * maps[masks]).astype(np.float32)
        out[masks] = np.clip(np.rint(out[masks].astype(np.float32) * factor[:, None]), 0, 255).astype(np.uint8)
    else:
        out[masks] = fill_values(images, fill["mode"], rng)[masks]
    return out


def random_masks(masks: np.ndarray, shape: str, rng: np.random.Generator,
                 offsets: np.ndarray | None = None) -> np.ndarray:
    """Masks with the same pixel count as ``masks``, at random places.

    ``rectangle``: a near-square rectangle at a random position holding exactly
    that many pixels (the last row partly filled); ``cam_shape``: the mask itself
    shifted cyclically by a random offset, written into ``offsets`` ((N, 2): dy, dx) when given
    (the faithfulness measure moves the maps by the same offsets).
    """
    n, h, w = masks.shape
    out = np.zeros_like(masks)
    counts = masks.reshape(n, -1).sum(1)
    for i, count in enumerate(counts):  # one small rectangle per image: index arithmetic, not pixels
        if count == 0:
            continue
        if shape == "cam_shape":
            dy, dx = rng.integers(h), rng.integers(w)
            out[i] = np.roll(masks[i], (dy, dx), axis=(0, 1))
            if offsets is not None:
                offsets[i] = dy, dx
            continue
        rh = min(h, max(1, int(round(np.sqrt(count)))))
        rw = min(w, int(np.ceil(count / rh)))
        rh = int(np.ceil(count / rw))
        y, x = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
        block = np.zeros(rh * rw, dtype=bool)
        block[:count] = True
        out[i, y : y + rh, x : x + rw] = block.reshape(rh, rw)
    return out


def random_place_levels(maps: np.ndarray, masks: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """The map a fill reads at a random placement ``moved`` of ``masks``: ``blend`` dims by the
    map's level, and at a random place each image takes the mean level its map had under its own
    mask (0 outside the moved mask)."""
    level = np.where(masks.any((1, 2)), np.where(masks, maps, 0).sum((1, 2)) / np.maximum(masks.sum((1, 2)), 1), 0)
    return np.where(moved, level[:, None, None], 0).astype(np.float32)

