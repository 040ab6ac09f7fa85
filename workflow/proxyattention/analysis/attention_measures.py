"""Question 2, measured without extra labels: what attention is known to do differently, measured
in any model, so a CNN with and without Proxy Attention can be put beside a ViT.

- Occlusion robustness (Naseer et al., NeurIPS 2021: ViTs keep far more accuracy than CNNs when
  random patches are dropped): accuracy with 0, 20, 40, 60 and 80% of a 14 x 14 grid of patches
  set to the fill the normalisation maps to zero (the dataset's mean colour), the patches drawn
  once per image from its own seeded stream, each level's patches holding the previous level's,
  so every arm and model sees the same occlusions; the area under that curve as one number.
- Calibration (Minderer et al., NeurIPS 2021): expected calibration error over 15 equal-width
  confidence bins, the multiclass Brier score (negative log-likelihood is ``val_loss``).
- Where the model looks: the spread of the predicted class's map at the configured target layer
  on a fixed sample of images: the share of the map's mass in its top 10% of pixels, and the
  map's entropy (normalised by the largest possible, so 1 is a flat map); where the dataset has
  object masks, the energy-based pointing game (Wang et al., CVPR-W 2020: the share of the map's
  mass inside the object, beside the object's share of the image, which a flat map would score)
  and the pointing game (Zhang et al., ECCV 2016: the map's maximum within 15 px of the object at
  224 px, scaled with the image).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.streams import OCCLUSION, SAMPLE, generator

GRID = 14
LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8)
ECE_BINS = 15


def sample_size(n: int | str | None, available: int) -> int:
    """How many of ``available`` images a sample setting asks for: a count (at most all), a share
    such as ``"10%"`` (rounded, at least one image when there are any), or None for all."""
    if n is None:
        return available
    if isinstance(n, str):
        share = float(n.rstrip("%")) / 100
        return min(available, max(1, int(round(share * available)))) if available else 0
    return min(available, int(n))


def sample_rows(rows: np.ndarray, n: int | str | None) -> np.ndarray:
    """Positions of a fixed sample of the evaluation rows (``n`` as :func:`sample_size` reads it),
    the same for every arm, model and seed: drawn from a stream keyed by the sample's purpose only."""
    rows = np.asarray(rows, dtype=np.int64)
    k = sample_size(n, len(rows))
    if k >= len(rows):
        return np.arange(len(rows))
    return np.sort(generator((0,), SAMPLE, len(rows)).choice(len(rows), k, replace=False))


def patch_bounds(size: int, grid: int = GRID) -> np.ndarray:
    """Pixel boundaries of a ``grid`` x ``grid`` partition of a ``size`` px side (16 px at 224)."""
    return np.rint(np.linspace(0, size, grid + 1)).astype(np.int64)


def occlusion_masks(rows: np.ndarray, size: int, level: float) -> np.ndarray:
    """(N, size, size) float32: 0 where an image's dropped patches are, 1 elsewhere. Image ``row``
    drops the first round(level * 196) patches of a permutation drawn from its own stream."""
    k = int(round(level * GRID * GRID))
    grid = np.ones((len(rows), GRID * GRID), dtype=np.float32)
    for i, row in enumerate(rows):
        grid[i, generator((0,), OCCLUSION, int(row)).permutation(GRID * GRID)[:k]] = 0.0
    counts = np.diff(patch_bounds(size))  # each patch's height and width in pixels
    grid = grid.reshape(len(rows), GRID, GRID)
    return np.repeat(np.repeat(grid, counts, axis=1), counts, axis=2)


@torch.no_grad()
def occlusion_accuracies(model, source, rows: np.ndarray, mean, std, batch_size: int, runtime,
                         unoccluded: float | None = None) -> list[float]:
    """Accuracy at each of LEVELS on ``source`` (an ArraySource of the sampled images, whose
    prepared rows are ``rows``), one model in eval mode; the occluded levels of a batch in one
    pass. ``unoccluded``: the accuracy at level 0 when the caller has it (one pass fewer)."""
    from ..data.batches import make_loader

    model.eval()
    size = source.parts[0][0].shape[1]
    levels = LEVELS[1:] if unoccluded is not None else LEVELS
    loader, _ = make_loader(source, mean, std, batch_size, device=runtime.device, channels_last=runtime.channels_last)
    correct = np.zeros(len(levels))
    start = 0
    for x, y in loader:
        b = len(y)
        # each batch's masks only (each image's patches come from its own stream): memory of one batch
        stacked = torch.cat([x * torch.from_numpy(occlusion_masks(rows[start:start + b], size, level)).to(x.device)[:, None]
                             for level in levels])  # the normalised fill is 0: the dataset's mean colour
        if runtime.channels_last:
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            pred = model(stacked).float().argmax(1).view(len(levels), b)
        correct += (pred == y[None]).sum(1).cpu().numpy()
        start += b
    accuracies = (correct / max(start, 1)).tolist()
    return ([unoccluded] if unoccluded is not None else []) + accuracies


def occlusion_auc(accuracies: list[float], levels=LEVELS) -> float:
    """The area under accuracy against the occluded fraction, divided by the fraction spanned:
    the curve's mean height (1: no loss at any level)."""
    return float(np.trapezoid(accuracies, levels) / (levels[-1] - levels[0]))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of (share of images in the bin) x |accuracy - mean
    confidence| in it; a confidence of exactly 1 falls in the last bin, 0 in the first."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    if not len(confidence):
        return math.nan
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def brier_terms(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's squared distance from its probabilities to the one-hot label (float64)."""
    p = np.asarray(probabilities, np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), labels] = 1.0
    return ((p - onehot) ** 2).sum(1)


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of the squared distance to the one-hot label."""
    if not len(probabilities):
        return math.nan
    return float(brier_terms(probabilities, labels).mean())


def spread_terms(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per map with mass (N, H, W, non-negative; all-zero maps left out): the share of mass in the
    top 10% of pixels and the entropy over pixels divided by log(H*W). Row by row, so the terms
    of a set of maps are those of its parts."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    mass = flat.sum(1)
    keep = mass > 0
    p = flat[keep] / mass[keep, None]
    top = max(1, int(round(0.1 * p.shape[1])))
    top_share = np.sort(p, axis=1)[:, -top:].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1) / math.log(p.shape[1])
    return top_share, entropy


def map_spread(maps: np.ndarray) -> tuple[float, float]:
    """Mean over maps (N, H, W, non-negative) of the share of mass in the top 10% of pixels and of
    the entropy of the map as a distribution over pixels divided by log(H*W); constant maps
    count as flat (0.1, 1.0), empty (all-zero) maps are left out."""
    return spread_means(*spread_terms(maps))


def spread_means(top_share: np.ndarray, entropy: np.ndarray) -> tuple[float, float]:
    if not len(top_share):
        return math.nan, math.nan
    return float(top_share.mean()), float(entropy.mean())


POINTING_TOLERANCE = 15  # px at 224 px (Zhang et al.), scaled with the image size


def localisation(maps: np.ndarray, masks: np.ndarray) -> dict:
    """Energy-based pointing game and pointing game of maps (N, H, W, non-negative) against object
    masks (N, H, W, nonzero = object), means over the images:
    ``map_in_object`` (share of the map's mass inside the object; maps without mass left out),
    ``object_share`` (the object's share of the image: what a flat map scores),
    ``pointing_game`` (hit: the map's first maximum lies within the tolerance of the object; a map
    without mass points nowhere and misses), and ``n_localised`` (images with a mask)."""
    return localisation_means(localisation_terms(maps, masks))


def localisation_terms(maps: np.ndarray, masks: np.ndarray) -> dict:
    """localisation's per-image terms (``in_object`` of the maps with mass, ``object_share``,
    ``hit``), row by row: those of a set of maps are those of its parts."""
    import cv2

    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks) != 0
    n, size = len(maps), maps.shape[-1] if len(maps) else 0
    if n == 0:
        return {"in_object": np.zeros(0), "object_share": np.zeros(0), "hit": np.zeros(0, bool)}
    tolerance = int(round(POINTING_TOLERANCE * size / 224))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    mass = maps.reshape(n, -1).sum(1)
    inside = (maps * masks).reshape(n, -1).sum(1)
    hits = np.zeros(n, dtype=bool)
    for i in range(n):
        if mass[i] > 0:
            near = cv2.dilate(masks[i].astype(np.uint8), kernel) if tolerance else masks[i]
            hits[i] = bool(near.reshape(-1)[maps[i].argmax()])
    has_mass = mass > 0
    return {"in_object": inside[has_mass] / mass[has_mass], "object_share": masks.reshape(n, -1).mean(1), "hit": hits}


def localisation_means(terms: dict) -> dict:
    n = len(terms["hit"])
    if n == 0:
        return {"map_in_object": math.nan, "object_share": math.nan, "pointing_game": math.nan, "n_localised": 0}
    return {"map_in_object": float(terms["in_object"].mean()) if len(terms["in_object"]) else math.nan,
            "object_share": float(terms["object_share"].mean()), "pointing_game": float(terms["hit"].mean()),
            "n_localised": int(n)}
