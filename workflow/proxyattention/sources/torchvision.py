"""Source ``torchvision``: a ``torchvision.datasets`` classification dataset, read through the
class itself, with the dataset's official train and validation splits.

Each class names its splits its own way (``train=True/False``, ``split="train"/"test"``,
``split="trainval"``...). SPLITS writes down, per supported class, how a split is asked for,
which splits exist, and which pair is the official (train, validation); a class without
splits (EuroSAT, Caltech101, ...) falls back to the stratified ``val_fraction`` draw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# name: (how a split is chosen: "train_flag" | "split" | None, splits that exist, official (train, val))
SPLITS = {
    "CIFAR10": ("train_flag", ("train", "test"), ("train", "test")),
    "CIFAR100": ("train_flag", ("train", "test"), ("train", "test")),
    "MNIST": ("train_flag", ("train", "test"), ("train", "test")),
    "FashionMNIST": ("train_flag", ("train", "test"), ("train", "test")),
    "KMNIST": ("train_flag", ("train", "test"), ("train", "test")),
    "QMNIST": ("train_flag", ("train", "test"), ("train", "test")),
    "USPS": ("train_flag", ("train", "test"), ("train", "test")),
    "SVHN": ("split", ("train", "test", "extra"), ("train", "test")),
    "STL10": ("split", ("train", "test"), ("train", "test")),
    "Flowers102": ("split", ("train", "val", "test"), ("train", "val")),
    "OxfordIIITPet": ("split", ("trainval", "test"), ("trainval", "test")),
    "DTD": ("split", ("train", "val", "test"), ("train", "val")),
    "Food101": ("split", ("train", "test"), ("train", "test")),
    "FGVCAircraft": ("split", ("train", "val", "trainval", "test"), ("train", "val")),
    "GTSRB": ("split", ("train", "test"), ("train", "test")),
    "StanfordCars": ("split", ("train", "test"), ("train", "test")),
    "Country211": ("split", ("train", "valid", "test"), ("train", "valid")),
    "Imagenette": ("split", ("train", "val"), ("train", "val")),
    "RenderedSST2": ("split", ("train", "val", "test"), ("train", "val")),
    "PCAM": ("split", ("train", "val", "test"), ("train", "val")),
    "EuroSAT": (None, (), (None, None)),
    "Caltech101": (None, (), (None, None)),
    "SUN397": (None, (), (None, None)),
    "SEMEION": (None, (), (None, None)),
}


# Which official splits hold the images of others (by the datasets' own definitions); every
# other pair of splits of a class above is a disjoint partition of its images (train/test,
# train/val/test, the PCAM and SVHN files, QMNIST's train and test sets). A split that holds
# the validation split would measure validation accuracy on trained images.
CONTAINS = {
    "FGVCAircraft": {"trainval": ("train", "val")},
}


# Classes whose object masks the workflow reads (datasets.<name>.masks), and how.
MASKS = {"OxfordIIITPet": "trimap"}


def overlapping(name: str, first: str | None, second: str | None) -> bool:
    """Whether two splits of ``name`` share images (one is or holds the other)."""
    if first is None or second is None:
        return False
    holds = CONTAINS.get(name, {})
    return first == second or second in holds.get(first, ()) or first in holds.get(second, ())


def split_kwargs(name: str, split: str | None) -> dict:
    """Keyword arguments of ``torchvision.datasets.<name>`` that select ``split``."""
    how = SPLITS[name][0]
    if how == "train_flag":
        return {"train": split == "train"}
    if how == "split":
        return {"split": split}
    return {}


def chosen_splits(spec: dict) -> tuple[str | None, str | None]:
    """(train split, validation split) of a dataset entry: its own, or the class's official pair."""
    train, val = SPLITS[spec["name"]][2]
    return spec.get("train_split") or train, spec.get("val_split") or val


def check(key: str, spec: dict, base=".") -> str | None:
    """What is wrong with a ``source: torchvision`` entry (``key``: datasets.<name>), or None."""
    import torchvision.datasets

    name = spec.get("name")
    if not name:
        return f"{key}.name: missing; a torchvision source needs the class name, e.g. name: CIFAR100"
    if name not in SPLITS:
        what = ("is not a classification dataset this workflow reads" if hasattr(torchvision.datasets, name)
                else "is not a class of torchvision.datasets")
        return f"{key}.name: {name} {what}; use one of {', '.join(sorted(SPLITS))}"
    how, splits, _ = SPLITS[name]
    for which in ("train_split", "val_split"):
        value = spec.get(which)
        if value is None:
            continue
        if how is None:
            return (f"{key}.{which}: {name} has no splits; leave {which} out (validation is drawn by "
                    "val_fraction)")
        if value not in splits:
            return f"{key}.{which}: {name} has no split '{value}'; its splits are {', '.join(splits)}"
    masks = spec.get("masks")
    if masks is not None and MASKS.get(name) != masks:
        supported = ", ".join(f"{cls} (masks: {kind})" for cls, kind in MASKS.items())
        return (f"{key}.masks: {name} has no masks the workflow reads as '{masks}'; masks come from {supported}, "
                "or an imagefolder/CSV source with mask files")
    train, val = chosen_splits(spec)
    if how is not None and train == val:
        return f"{key}: train_split and val_split are both '{train}'; validation must be another split"
    if how is not None and overlapping(name, train, val):
        big, small = (train, val) if val in CONTAINS.get(name, {}).get(train, ()) else (val, train)
        disjoint = [s for s in splits if s != train and not overlapping(name, train, s)]
        return (f"{key}: train_split '{train}' and val_split '{val}' share images ({name}'s '{big}' holds "
                f"'{small}'), so validation would be measured on trained images; set val_split to a split "
                f"outside '{train}' ({', '.join(disjoint)})")
    if not spec.get("download", False) and not Path(base, spec["path"]).exists():
        return (f"{key}.path: {spec['path']} does not exist; set download: true to fetch {name} there, "
                "or point path at the folder that holds it")
    return None


def _labels(ds) -> np.ndarray:
    """Every label without decoding an image, from the attribute each class keeps them in."""
    for attribute in ("targets", "labels", "_labels", "y"):
        values = getattr(ds, attribute, None)
        if values is not None and len(values) == len(ds):
            return np.asarray([int(v) for v in values])
    samples = getattr(ds, "_samples", None)
    if samples is not None and len(samples) == len(ds):
        return np.asarray([int(s[1]) for s in samples])
    return np.asarray([int(ds[i][1]) for i in range(len(ds))])  # decodes: only for classes without a list


def _classes(ds, n: int) -> list[str]:
    for attribute in ("classes", "categories"):
        names = getattr(ds, attribute, None)
        if names is not None and len(names) >= n:
            return [str(c) for c in names]
    return [str(i) for i in range(n)]


def _loader(ds, i: int):
    return lambda: np.asarray(ds[i][0])


def _trimap_loader(ds, i: int):
    """OxfordIIITPet's trimap of image i as an object mask: 1 (pet) and 3 (its border) are object,
    2 is background (the dataset's README). Read through the class (``target_types="segmentation"``),
    which opens the image too: its size is checked against the trimap's."""

    def load():
        from ..data.images import BadImageError

        image, trimap = ds[i]
        if image.size != trimap.size:
            raise BadImageError(f"{ds._segs[i] if hasattr(ds, '_segs') else f'trimap {i}'}: trimap of "
                                f"{trimap.size[0]}x{trimap.size[1]} px for an image of {image.size[0]}x{image.size[1]} px")
        return (np.asarray(trimap) != 2).astype(np.uint8)

    return load


def list_torchvision(root: Path, spec: dict):
    """Items and class names of a torchvision dataset (each item decoded by the class on demand)."""
    import torchvision.datasets

    from .base import Item, SourceError

    name = spec["name"]
    cls = getattr(torchvision.datasets, name)
    train, val = chosen_splits(spec)
    parts = [("train", train), ("val", val)] if SPLITS[name][0] else [("", None)]
    items, n_classes, classes = [], 0, None
    for ours, theirs in parts:
        try:
            ds = cls(str(root), download=spec.get("download", False), **split_kwargs(name, theirs))
        except (RuntimeError, FileNotFoundError) as err:  # torchvision: "Dataset not found ..."
            raise SourceError(
                f"{root}: torchvision's {name} ({theirs or 'all'} split) is not there ({err}); set download: true, "
                "or point path at the folder that holds it") from None
        labels = _labels(ds)
        n_classes = max(n_classes, int(labels.max()) + 1)
        classes = classes or _classes(ds, n_classes)
        segmentation = (cls(str(root), target_types="segmentation", **split_kwargs(name, theirs))
                        if spec.get("masks") == "trimap" else None)
        items += [Item(f"torchvision:{name}:{theirs or 'all'}#{i}", int(label), ours, _loader(ds, i),
                       _trimap_loader(segmentation, i) if segmentation is not None else None)
                  for i, label in enumerate(labels)]
    return items, classes
