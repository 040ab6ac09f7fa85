"""Stage ``mask_and_save``: erase the most activated pixels of each selected image.

Thresholds and fills (data/erasing.py) are vectorised over the batch. The erased pixels are
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

from ..data.erasing import (
    changed_fraction,
    covered_fraction,
    empty_masks,
    erase,
    random_masks,
    random_place_levels,
    threshold_masks,
)
from ..data.streams import MASK, generator
from ..files.artifacts import NpzWriter, cams_memmap, load_prepared
from ..files.atomic import atomic_dir, atomic_path, read_json, write_csv
from ..runtime.timing import timed_stage


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
    covered = np.ones(len(rows))  # training-pass maps: the share of the image their view covered
    files = np.full(len(rows), "", dtype=object)
    png_bytes = np.zeros(len(rows), dtype=np.int64)  # each PNG's size: aggregate adds these, walking no folder
    offsets = np.full((len(rows), 2), -1, dtype=np.int64)  # cam_shape control: each mask's cyclic shift
    keep = np.flatnonzero(added)

    def erased_batches(tmp_dir):
        """Each batch's kept erased images, in order, after writing their PNGs."""
        for start in range(0, len(rows), batch_size):
            part = slice(start, start + batch_size)
            batch_maps = np.asarray(maps[part], dtype=np.float32)
            covered[part] = covered_fraction(batch_maps)
            masks, thresholds[part] = threshold_masks(batch_maps, proxy["threshold"]["mode"],
                                                      proxy["threshold"]["value"])
            if control == "duplicate":
                masks = np.zeros_like(masks)
            elif control == "random":
                moved = random_masks(masks, proxy["random_erase"]["shape"], rng, offsets[part])
                batch_maps = random_place_levels(batch_maps, masks, moved)
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
                png_bytes[i] = (tmp_dir / rel).stat().st_size
            yield erased[kept]

    with atomic_dir(out_dir) as tmp_dir, atomic_path(out_npz) as tmp, NpzWriter(tmp) as npz:
        npz.stream("images", (len(keep), size, size, 3), np.uint8, erased_batches(tmp_dir))
        npz.write("labels", labels[keep].astype(np.int64))
        npz.write("index", rows[keep])
    write_csv(out_table, pd.DataFrame({
        "map_position": np.arange(len(rows)), "index": rows, "source": sources, "label": labels,
        "class": [classes[l] for l in labels], "empty_map": empty, "added": added, "png": files,
        "threshold": thresholds, "erased_fraction": fractions, "changed_fraction": changed,
        "control": control or "cam", "offset_y": offsets[:, 0], "offset_x": offsets[:, 1],
        "covered_fraction": covered, "png_bytes": png_bytes,
    }))
