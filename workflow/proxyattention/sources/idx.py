"""Source ``idx``: MNIST-style IDX files (gzipped or not).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .base import Item, SourceError

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


def _slicer(images: np.ndarray, i: int) -> Callable[[], np.ndarray]:
    return lambda: images[i]


def _has_val(root: Path) -> bool:
    return any((root / (IDX_FILES["val"][0] + ext)).exists() for ext in ("", ".gz"))
