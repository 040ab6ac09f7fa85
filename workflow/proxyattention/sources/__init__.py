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

from .base import Item, SourceError
from .folder import _imagefolder
from .idx import _idx
from .table import _csv


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

