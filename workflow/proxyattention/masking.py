"""Stage ``mask_and_save``: erase the most activated pixels of each selected image.

Thresholds and fills are vectorised over the batch. The erased pixels are
exactly the thresholded ones. The control arms: ``random_erase`` erases the
same number of pixels at a random place; ``duplicate`` adds the same images
unchanged. An image whose map is empty (constant) has nothing to erase: by
default (``proxy.empty_maps: skip``) it is left out, in every arm alike, so no
arm adds an unchanged copy under the name of erasing. Outputs: PNGs in class
folders of ``erased/``, ``erased.npz`` (images, labels, rows of the added images)
for retraining without decoding, and ``erased.csv`` with one row per selected
image: its map, whether it was added, where its PNG is and what was erased.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .artifacts import NpzWriter, cams_memmap, empty_maps
from .atomic import atomic_dir, atomic_path, read_json, write_csv
from .prepare import load_prepared
from .streams import MASK, generator
from .timing import timed_stage


def threshold_masks(maps: np.ndarray, mode: str, value: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (N, H, W) of the pixels to erase, and the threshold used for each map.

    ``quantile``: pixels strictly above the per-map ``value`` quantile;
    ``value``: pixels strictly above ``value``; ``topk_area``: exactly
    round((1 - value) * H * W) pixels, highest first, ties broken by position.
    """
    n, h, w = maps.shape
    flat = maps.reshape(n, -1)
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


def random_masks(masks: np.ndarray, shape: str, rng: np.random.Generator) -> np.ndarray:
    """Masks with the same pixel count as ``masks``, at random places.

    ``rectangle``: a near-square rectangle at a random position holding exactly
    that many pixels (the last row partly filled); ``cam_shape``: the mask itself
    shifted cyclically by a random offset.
    """
    n, h, w = masks.shape
    out = np.zeros_like(masks)
    counts = masks.reshape(n, -1).sum(1)
    for i, count in enumerate(counts):  # one small rectangle per image: index arithmetic, not pixels
        if count == 0:
            continue
        if shape == "cam_shape":
            out[i] = np.roll(masks[i], (rng.integers(h), rng.integers(w)), axis=(0, 1))
            continue
        rh = min(h, max(1, int(round(np.sqrt(count)))))
        rw = min(w, int(np.ceil(count / rh)))
        rh = int(np.ceil(count / rw))
        y, x = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
        block = np.zeros(rh * rw, dtype=bool)
        block[:count] = True
        out[i, y : y + rh, x : x + rw] = block.reshape(rh, rw)
    return out


def _folder_name(label: int, name: str) -> str:
    return f"{label:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"


CONTROLS = (None, "random", "duplicate")


class Float32Rows:
    """Rows of a (memory-mapped) array read as float32 a slice at a time, for :func:`empty_masks`."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, rows) -> np.ndarray:
        return np.asarray(self.array[rows], dtype=np.float32)


@timed_stage
def mask_and_save(settings: dict, images_path, index_path, classes_path, cams_path, out_dir, out_npz, out_table,
                  *, control: str | None = None, seed=0, batch_size: int = 256) -> None:
    """Erase each selected image's top-activated pixels (or, with ``control='random'``,
    the same number of pixels at random; with ``control='duplicate'``, nothing) and save
    the images that join training.

    Images whose map is empty are left out unless ``proxy.empty_maps`` is ``keep``.
    The random draws depend only on ``seed`` (an int, or (seed, cycle)), so a rerun writes the
    same files.
    """
    if control not in CONTROLS:
        raise ValueError(f"unknown control '{control}'; allowed: {CONTROLS}")
    proxy = settings["proxy"]
    images, index = load_prepared(images_path, index_path)
    classes = read_json(classes_path)["classes"]
    maps, rows, _ = cams_memmap(cams_path)  # read a batch at a time: memory does not grow with the selection
    labels = index.set_index("index").loc[rows, "label"].to_numpy() if len(rows) else np.zeros(0, np.int64)
    sources = index.set_index("index").loc[rows, "source"].to_numpy() if len(rows) else np.zeros(0, str)
    empty = empty_masks(Float32Rows(maps), proxy["threshold"], batch_size)
    added = ~empty if proxy["empty_maps"] != "keep" else np.ones(len(rows), bool)
    rng = generator(seed, MASK, {None: 0, "random": 1, "duplicate": 2}[control])
    size = images.shape[1]
    thresholds = np.zeros(len(rows))
    fractions = np.zeros(len(rows))
    changed = np.zeros(len(rows))
    files = np.full(len(rows), "", dtype=object)
    keep = np.flatnonzero(added)

    def erased_batches(tmp_dir):
        """Each batch's kept erased images, in order, after writing their PNGs."""
        for start in range(0, len(rows), batch_size):
            part = slice(start, start + batch_size)
            batch_maps = np.asarray(maps[part], dtype=np.float32)
            masks, thresholds[part] = threshold_masks(batch_maps, proxy["threshold"]["mode"],
                                                      proxy["threshold"]["value"])
            if control == "duplicate":
                masks = np.zeros_like(masks)
            elif control == "random":
                moved = random_masks(masks, proxy["random_erase"]["shape"], rng)
                # blend dims by the map's level; at a random place use the mean level it had under the mask
                level = np.where(masks.any((1, 2)),
                                 (batch_maps * masks).sum((1, 2)) / np.maximum(masks.sum((1, 2)), 1), 0)
                batch_maps = np.where(moved, level[:, None, None], 0).astype(np.float32)
                masks = moved
            originals = np.asarray(images[rows[part]])
            erased = erase(originals, batch_maps, masks, proxy["fill"], rng)
            fractions[part] = masks.reshape(len(masks), -1).mean(1)
            changed[part] = changed_fraction(originals, erased)
            kept = np.flatnonzero(added[part])
            for j in kept:
                i = start + j
                rel = Path(_folder_name(int(labels[i]), classes[labels[i]])) / f"{int(rows[i]):07d}.png"
                (tmp_dir / rel.parent).mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(tmp_dir / rel), cv2.cvtColor(erased[j], cv2.COLOR_RGB2BGR)):
                    raise OSError(f"OpenCV could not write {tmp_dir / rel}")
                files[i] = str(Path(out_dir) / rel)
            yield erased[kept]

    with atomic_dir(out_dir) as tmp_dir, atomic_path(out_npz) as tmp, NpzWriter(tmp) as npz:
        npz.stream("images", (len(keep), size, size, 3), np.uint8, erased_batches(tmp_dir))
        npz.write("labels", labels[keep].astype(np.int64))
        npz.write("index", rows[keep])
    write_csv(out_table, pd.DataFrame({
        "map_position": np.arange(len(rows)), "index": rows, "source": sources, "label": labels,
        "class": [classes[l] for l in labels], "empty_map": empty, "added": added, "png": files,
        "threshold": thresholds, "erased_fraction": fractions, "changed_fraction": changed,
        "control": control or "cam",
    }))
