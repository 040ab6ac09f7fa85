"""Stage ``prepare``: decode and resize every image once into a uint8 array on disk.

Splits and subsets are drawn by data/splits.py. Outputs, in the dataset's prepared folder:
- ``images.npy``: uint8 array (N, S, S, 3), memory-mapped by every later stage;
- ``index.csv``: index, source, label, class, split (train/val/test), sha1 of the pixels; with
  ``train_sizes`` also train_rank and train_order (each training size's rows, data/splits.py);
- ``classes.json``: class names in label order, and the image size;
- ``skipped.csv``: the files left out under ``on_bad_image: skip`` (empty otherwise).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.images import MAX_PIXELS, BadImageError, decode_image, resize, to_rgb
from ..data.splits import (
    SUBSET_STREAMS,
    draw_split,
    draw_subset,
    drop_cross_split_duplicates,
    size_members,
    train_orders,
    train_ranks,
)
from ..files.atomic import atomic_path, live, write_csv, write_json
from ..runtime.pool import bounded_map
from ..runtime.timing import images_done, timed_stage
from ..sources import list_items, split_origins
from ..sources.base import Item, SourceError

log = logging.getLogger(__name__)


def name_list(names: list, one: str, many: str, shown: int = 8) -> str:
    """``3 classes (a, b, c)``; past ``shown`` names, the first ones and how many more (a
    1,000-class dataset's warning is one line, not a thousand names)."""
    listed = ", ".join(map(str, names[:shown])) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return f"{len(names)} {one if len(names) == 1 else many} ({listed})"


def progress(done, total: int, name: str):
    """Yield from ``done``, logging every tenth of ``total``; with a bar where the process's own
    terminal is (under Snakemake stderr is the rule's log, so the bar goes to the terminal the
    workflow runs in, and the log gets the tenths)."""
    terminal = sys.__stderr__
    bar = None
    if terminal is not None and terminal.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"prepare {name}", unit="img", file=terminal, smoothing=0.1, leave=False)
    step = max(1, total // 10)
    for i, item in enumerate(done, 1):
        if bar is not None:
            bar.update()
        if i % step == 0 or i == total:
            log.info("decoded %d of %d images", i, total)
        yield item
    if bar is not None:
        bar.close()


def _load(item: Item, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    image = to_rgb(item.load()) if item.load is not None else decode_image(item.source, max_pixels)
    return resize(image, size)


@timed_stage
def prepare(dataset: dict, images_path, index_path, classes_path, skipped_path, threads: int = 4) -> None:
    """Decode, convert to RGB and resize every image of ``dataset`` (a config entry) once."""
    items, classes = list_items(dataset)
    if not items:
        raise SourceError(f"{dataset['path']}: no images found")
    origins = split_origins(dataset, items)
    size = dataset["image_size"]
    labels = np.array([it.label for it in items])
    splits = draw_split(labels, [it.split for it in items], dataset["val_fraction"], dataset["split_seed"],
                        dataset.get("test_fraction", 0.0))
    n_train_available = int((splits == "train").sum())
    n_val_available = int((splits == "val").sum())
    keep = np.ones(len(items), dtype=bool)
    for split in SUBSET_STREAMS:
        keep &= draw_subset(labels, splits, dataset.get(f"{split}_subset") or {}, dataset["split_seed"], split)
    sized = bool(dataset.get("train_sizes"))
    if sized:  # every size is a prefix of these orders; the largest size's images are decoded
        ranks = train_ranks(labels, splits, dataset["split_seed"])
        orders = train_orders(labels, ranks)
        kind, values = next(iter(dataset["train_sizes"].items()))
        keep &= (splits != "train") | size_members(ranks, orders, {kind: max(values)})
    if not keep.all():  # the images left out are never decoded
        chosen = np.flatnonzero(keep)
        items, labels, splits = [items[i] for i in chosen], labels[chosen], splits[chosen]
        if sized:
            ranks, orders = ranks[chosen], orders[chosen]
        log.info("subsets: %d of %d training images, %d of %d validation images", int((splits == "train").sum()),
                 n_train_available, int((splits == "val").sum()), n_val_available)

    images_path = Path(images_path)
    bad: list[tuple[str, str]] = []
    keep = np.ones(len(items), dtype=bool)
    with atomic_path(images_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), size, size, 3))

        hashes = [""] * len(items)

        def work(i: int) -> None:
            try:
                array[i] = _load(items[i], size, dataset.get("max_pixels", MAX_PIXELS))
                # hashed as written (still in memory), not read back from disk after every image is done
                hashes[i] = hashlib.sha1(np.ascontiguousarray(array[i]).tobytes()).hexdigest()
            except BadImageError as err:
                bad.append((items[i].source, str(err)))
                keep[i] = False

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in progress(bounded_map(pool, work, range(len(items))), len(items), Path(str(dataset["path"])).name):
                pass
        if bad and dataset["on_bad_image"] == "fail":
            listing = "\n  ".join(msg for _, msg in sorted(bad))
            raise BadImageError(
                f"{len(bad)} bad image(s) in {dataset['path']}:\n  {listing}\n"
                "Fix or remove these files, or set on_bad_image: skip for this dataset."
            )
        array.flush()
        if bad:  # the kept rows go straight to a file of the final length, a few at a time
            _write_rows(array, np.flatnonzero(keep), tmp)
        del array
    images_done()

    kept = np.flatnonzero(keep)
    hashes = [hashes[i] for i in kept]
    index = pd.DataFrame(
        {
            "index": np.arange(len(kept)),
            "source": [items[i].source for i in kept],
            "label": labels[kept],
            "class": [classes[labels[i]] for i in kept],
            "split": splits[kept],
            "sha1": hashes,
        }
    )
    if sized:  # a training size's rows: data/splits.py restrict_to_size
        index["train_rank"], index["train_order"] = ranks[kept], orders[kept]
    notes = []  # warnings a reader must see: logged, and kept in classes.json for the end of the run to print
    duplicates = drop_cross_split_duplicates(index)
    if len(duplicates):
        notes.append(f"{len(duplicates)} held-out image(s) have the same pixels as an image of an earlier split "
                     f"and leave their split (listed in {skipped_path})")
    train_classes = set(index.loc[index.split == "train", "label"])
    missing_val = sorted(set(range(len(classes))) - set(index.loc[index.split == "val", "label"]))
    if len(train_classes) < len(classes):
        absent = sorted(set(range(len(classes))) - train_classes)
        raise SourceError(
            f"{dataset['path']}: classes {[classes[i] for i in absent]} have no training images; add images or remove them"
            + (" (or raise train_subset.total to at least one image per class)" if dataset.get("train_subset") else "")
        )
    if missing_val:
        has = "has" if len(missing_val) == 1 else "have"
        notes.append(f"{name_list([classes[i] for i in missing_val], 'class', 'classes')} {has} no validation images: "
                     "their validation accuracy and recall are not measured (raise val_fraction, or add validation "
                     "images)")
    for note in notes:
        log.warning("%s", note)
    write_csv(skipped_path, pd.concat([pd.DataFrame(bad, columns=["source", "reason"]), duplicates],
                                      ignore_index=True))
    write_csv(index_path, index)
    write_json(
        classes_path,
        {
            "classes": classes,
            "image_size": size,
            "n_train": int((index.split == "train").sum()),
            "n_train_available": n_train_available,  # before train_subset or train_sizes
            "n_val": int((index.split == "val").sum()),
            "n_val_available": n_val_available,  # before val_subset
            "n_test": int((index.split == "test").sum()),
            "n_skipped": len(bad),
            "warnings": notes,
            "n_cross_split_duplicates": len(duplicates),  # held-out images equal to an earlier split's
            "classes_without_val": [classes[i] for i in missing_val],
            # where the held-out splits come from: the verdicts' split column, answer and figures say it
            "split_origins": origins,
        },
    )


def _write_rows(array: np.ndarray, rows: np.ndarray, path: Path, chunk: int = 32) -> None:
    """Replace the .npy file ``path`` by ``array[rows]``, written in chunks of rows through a file
    (not a second memory map), so memory stays that of one chunk however large the array."""
    partial = path.with_name(path.name + ".rows")
    try:
        with live(partial), open(partial, "wb") as f:
            np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                     "fortran_order": False, "shape": (len(rows), *array.shape[1:])})
            for start in range(0, len(rows), chunk):
                array[rows[start:start + chunk]].tofile(f)  # a copy of these rows only
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
