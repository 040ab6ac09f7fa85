"""Readers of the arrays the stages hand to each other (numpy only: cheap to import)."""

from __future__ import annotations

import numpy as np


def empty_maps(maps: np.ndarray) -> np.ndarray:
    """True for each map (N, H, W) that is constant: nothing in it to threshold or erase."""
    if not len(maps):
        return np.zeros(0, dtype=bool)
    flat = maps.reshape(len(maps), -1)
    return flat.max(1) <= flat.min(1)


def load_cams(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """maps (float32, N x S x S), prepared-array rows and explained classes from ``cams.npz``."""
    with np.load(path, allow_pickle=False) as data:
        return data["maps"].astype(np.float32), data["index"], data["target"]


def load_erased(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """images (uint8, N x S x S x 3), labels and source rows from ``erased.npz``."""
    with np.load(path, allow_pickle=False) as data:
        return data["images"], data["labels"], data["index"]
