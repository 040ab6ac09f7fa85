"""Dataset sources: an ImageFolder tree, a CSV of ``path,label``, MNIST-style IDX files, or a
torchvision dataset (torchvision_source.py).

A source is listed into :class:`Item` records without decoding anything, so a
wrong path, an empty class or an unknown label is reported before any
expensive work starts.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2"}


class SourceError(ValueError):
    """A dataset source that cannot be listed; the message names the path and the fix."""


@dataclass(frozen=True)
class Item:
    source: str  # a file path, or "file#index" for IDX records
    label: int
    split: str  # "train", "val" or "" (drawn later from val_fraction)
    load: Callable[[], np.ndarray] | None = None  # for in-memory sources; None means decode ``source``
    mask: str | Callable[[], np.ndarray] | None = None  # its object mask: a file or a loader (nonzero = object)


def list_items(spec: dict, base: str | os.PathLike = ".") -> tuple[list[Item], list[str]]:
    """List every item of a dataset spec (as in the config) and its class names.

    A source with a training split and no validation split (``train/`` and maybe ``test/``
    folders, a CSV whose split column has no ``val``) gets its validation drawn from the
    training images by ``val_fraction``, as a source without splits does."""
    from .torchvision_source import list_torchvision

    kind = spec["source"]
    path = Path(base, spec["path"])
    if not path.exists() and not (kind == "torchvision" and spec.get("download")):
        raise SourceError(f"dataset path {path} does not exist; set datasets.<name>.path to an existing {kind} source")
    listers = {"imagefolder": _imagefolder, "csv": _csv, "idx": _idx, "torchvision": list_torchvision}
    if spec.get("masks") and kind == "imagefolder":
        spec = {**spec, "masks": str(Path(base, spec["masks"]))}
    items, classes = listers[kind](path, spec)
    if spec.get("classes", "auto") != "auto":
        named = list(spec["classes"])
        if kind in ("idx", "torchvision"):
            if len(named) != len(classes):
                raise SourceError(f"{path}: {len(classes)} label values but {len(named)} class names in datasets.<name>.classes")
            classes = named
        elif sorted(named) != sorted(classes):
            raise SourceError(f"{path}: class names {sorted(classes)} do not match datasets.<name>.classes {sorted(named)}")
        else:
            order = {name: i for i, name in enumerate(named)}
            remap = np.array([order[c] for c in classes])
            items = [replace(it, label=int(remap[it.label])) for it in items]
            classes = named
    if any(it.split == "train" for it in items) and not any(it.split == "val" for it in items):
        # train/ (and perhaps test/) but no val/: validation is drawn from the training images
        items = [replace(it, split="" if it.split == "train" else it.split) for it in items]
    return items, classes


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _imagefolder(root: Path, spec: dict) -> tuple[list[Item], list[str]]:
    splits = {"train": root / "train", "val": root / "val", "test": root / "test"}
    if not splits["train"].is_dir():
        splits = {"": root}
    classes = [p.name for p in _class_folders(next(iter(splits.values())))]
    if not classes:
        raise SourceError(f"{root}: no class folders found; expected {root}/train/<class>/* or {root}/<class>/*")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for split, folder in splits.items():
        if not folder.is_dir():
            continue
        for class_dir in _class_folders(folder):
            if class_dir.name not in index:
                raise SourceError(
                    f"{class_dir}: class '{class_dir.name}' is not among the training classes; "
                    "rename or remove the folder"
                )
            files = _images_in(class_dir)
            if not files and split == "train":
                raise SourceError(f"{class_dir}: empty class folder; add images or remove the folder")
            items += [Item(str(f), index[class_dir.name], split) for f in files]
    if spec.get("masks"):
        items = _with_mask_files(items, root, Path(spec["masks"]))
    return items, classes


def _with_mask_files(items: list[Item], root: Path, masks: Path) -> list[Item]:
    """Each image's mask from a tree mirroring the image tree: ``<masks>/<path under root>`` with
    any image suffix (``train/cat/1.jpg`` -> ``<masks>/train/cat/1.png``). An image without one
    keeps no mask; a tree that holds none of them is refused."""
    if not masks.is_dir():
        raise SourceError(f"{masks}: the masks folder does not exist; set datasets.<name>.masks to a folder that "
                          f"mirrors {root} (masks/<split>/<class>/<stem>.png)")
    if masks.resolve().is_relative_to(root.resolve()) and not (root / "train").is_dir():
        raise SourceError(f"{masks}: the masks folder is inside the image folder {root}, where it reads as a class; "
                          "put it beside the image folder")
    found = {p.relative_to(masks).with_suffix(""): p for p in _images_in(masks)}
    out = [replace(it, mask=str(found[key]) if (key := Path(it.source).relative_to(root).with_suffix("")) in found
                   else None) for it in items]
    if not any(it.mask for it in out):
        example = Path(items[0].source).relative_to(root).with_suffix(".png")
        raise SourceError(f"{masks}: no mask matches an image of {root} (for {items[0].source} it looks for "
                          f"{masks / example}); lay the masks out as the image tree")
    return out


def _csv(path: Path, spec: dict) -> tuple[list[Item], list[str]]:
    import pandas as pd

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise SourceError(f"{path}: missing column(s) {sorted(missing)}; a CSV source needs 'path,label' and optionally "
                          "'split' and 'mask'")
    classes = sorted(set(table["label"]))
    index = {c: i for i, c in enumerate(classes)}
    splits = table["split"] if "split" in table.columns else [""] * len(table)
    masks = table["mask"] if "mask" in table.columns else [""] * len(table)
    bad_splits = set(splits) - {"", "train", "val", "test"}
    if bad_splits:
        raise SourceError(f"{path}: split values {sorted(bad_splits)} are not allowed; use 'train', 'val', 'test' or "
                          "leave empty")
    items, outside = [], []
    folder = path.parent.resolve()
    for p, label, split, mask in zip(table["path"], table["label"], splits, masks):
        file = Path(p) if Path(p).is_absolute() else path.parent / p
        mask_file = (Path(mask) if Path(mask).is_absolute() else path.parent / mask) if mask else None
        for listed in (file, mask_file):
            if listed is not None and listed.exists() and not listed.is_file():  # a FIFO would hang the decoder
                raise SourceError(f"{path}: {p if listed == file else mask} is not a regular file (a folder, FIFO or "
                                  "device); list image files only")
        if not file.resolve().is_relative_to(folder):
            outside.append(p)
        items.append(Item(str(file), index[label], split, mask=str(mask_file) if mask_file else None))
    if outside:
        log.warning("%s lists %d image(s) outside its folder %s (read as listed): %s%s", path, len(outside), folder,
                    ", ".join(outside[:5]), ", ..." if len(outside) > 5 else "")
    return items, classes


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) as a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SourceError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise SourceError(f"{path}: truncated IDX file ({len(data) - offset} of {expected} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise SourceError(f"{root}: missing {stem}[.gz]; an IDX source needs the MNIST file names")


def _idx(root: Path, spec: dict) -> tuple[list[Item], list[str]]:
    items = []
    n_classes = 0
    has_val = _has_val(root)
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        if split == "val" and not has_val:
            continue  # validation drawn from the training files by val_fraction
        images_file, labels_file = _find(root, images_stem), _find(root, labels_stem)
        images, labels = read_idx(images_file), read_idx(labels_file)
        if len(images) != len(labels):
            raise SourceError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} IDX files")
        n_classes = max(n_classes, int(labels.max()) + 1)
        for i, label in enumerate(labels):
            items.append(Item(f"{images_file}#{i}", int(label), split if has_val else "", _slicer(images, i)))
    return items, [str(i) for i in range(n_classes)]


def _has_val(root: Path) -> bool:
    return any((root / (IDX_FILES["val"][0] + ext)).exists() for ext in ("", ".gz"))


def _slicer(images: np.ndarray, i: int) -> Callable[[], np.ndarray]:
    return lambda: images[i]
