"""Dataset sources: an ImageFolder tree (``folder``), a CSV of ``path,label`` (``table``),
MNIST-style IDX files (``idx``) or a torchvision dataset (``torchvision``), each a module of its
own that imports only ``base``.

A source is listed into :class:`~.base.Item` records without decoding anything, so a wrong path,
an empty class or an unknown label is reported before any expensive work starts.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from .base import IMAGE_SUFFIXES, Item, SourceError
from .folder import _imagefolder
from .idx import _idx
from .table import _csv


def _has_image(folder: Path) -> bool:
    """Whether ``folder`` holds an image file anywhere below it (stops at the first)."""
    for _, _, files in os.walk(folder):
        if any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files):
            return True
    return False


def layout_problem(spec: dict, base: str | os.PathLike = ".") -> str | None:
    """What is wrong with a dataset path for its source kind, seen without reading any image (a
    message naming the path and the fix), or None. Cheap enough for the start of every run: a CSV's
    header line, the IDX file names, an ImageFolder's class folders (each scanned to its first
    image). The full listing (labels, splits, every file) is prepare's."""
    from .idx import IDX_FILES

    kind, path = spec["source"], Path(base, spec["path"])
    if kind == "torchvision" or not path.exists():
        return None
    idx_files = path.is_dir() and any((path / (stem + ext)).exists() for stem, _ in IDX_FILES.values()
                                      for ext in ("", ".gz"))
    if kind == "csv":
        if path.is_dir():
            other = ("IDX files: use source: idx" if idx_files else "a folder of class folders: use source: "
                     "imagefolder")
            return f"{spec['path']} is a folder; a csv source is a CSV file with 'path,label' columns (for {other})"
        import csv

        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
        missing = {"path", "label"} - {h.strip() for h in header}
        if missing:
            return (f"{spec['path']}: its first line has no column(s) {', '.join(sorted(missing))}; a csv source needs "
                    f"a header 'path,label' (optionally 'split', 'mask'); it has: {', '.join(header) or 'nothing'}")
        return None
    if not path.is_dir():
        return (f"{spec['path']} is a file; an {kind} source is a folder"
                + (" (a CSV listing images: use source: csv)" if path.suffix.lower() == ".csv" else ""))
    if kind == "idx":
        stem = IDX_FILES["train"][0]
        if not any((path / (name + ext)).exists() for name in IDX_FILES["train"] for ext in ("", ".gz")):
            looks = (" It holds class folders: for an image folder use source: imagefolder."
                     if any(p.is_dir() for p in path.iterdir()) else "")
            return f"{spec['path']} holds no {stem}[.gz]; an idx source is a folder of MNIST-named IDX files.{looks}"
        return None
    root = path / "train" if (path / "train").is_dir() else path  # imagefolder
    classes = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not classes:
        hint = " It holds IDX files: use source: idx." if idx_files else ""
        return f"{spec['path']}: no class folders; expected {spec['path']}/train/<class>/* or {spec['path']}/<class>/*.{hint}"
    empty = [p for p in classes if not _has_image(p)]
    if empty:
        names = ", ".join(str(p) for p in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        return (f"{spec['path']}: empty class folder(s) {names} (no image file: {', '.join(sorted(IMAGE_SUFFIXES))});"
                " add images or remove the folder")
    return None


def list_items(spec: dict, base: str | os.PathLike = ".") -> tuple[list[Item], list[str]]:
    """List every item of a dataset spec (as in the config) and its class names.

    A source with a training split and no validation split (``train/`` and maybe ``test/``
    folders, a CSV whose split column has no ``val``) gets its validation drawn from the
    training images by ``val_fraction``, as a source without splits does."""
    from .torchvision import list_torchvision

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


def split_origins(spec: dict, items: list[Item]) -> dict:
    """Where each held-out split of a dataset comes from, in words for the verdicts and figures:
    ``{"val": ..., "test": ...}`` (``test`` None without a test split). ``items`` are the listed
    items (``list_items``): a validation split they already carry is the source's own (the
    official validation or test split of a torchvision class or of IDX files, ``root/val``, a
    CSV's ``split`` column); otherwise ``prepare`` draws it by ``val_fraction``."""
    from .torchvision import SPLITS, chosen_splits

    kind = spec["source"]

    def own(split: str) -> str:
        if kind == "torchvision":
            name = spec["name"]
            chosen = chosen_splits(spec)[1] if split == "val" else "test"
            official = SPLITS.get(name, (None, (), (None, None)))[2][1]
            return (f"the official {chosen} split of {name}" if chosen == official
                    else f"the {chosen} split of {name}")
        if kind == "idx":
            return "the official test split of the IDX files (t10k)"
        if kind == "imagefolder":
            return f"the images of {split}/ in the dataset folder"
        return f"the rows of the CSV whose split is {split}"

    val = (own("val") if any(it.split == "val" for it in items)
           else f"a validation split drawn from the training images by val_fraction {spec.get('val_fraction')}, "
                f"split_seed {spec.get('split_seed')}")
    if any(it.split == "test" for it in items):
        test = own("test")
    elif spec.get("test_fraction", 0.0) > 0:
        test = (f"a test split drawn from the training images by test_fraction {spec['test_fraction']}, "
                f"split_seed {spec.get('split_seed')}")
    else:
        test = None
    return {"val": val, "test": test}

