"""What every source lists: :class:`Item` records and ``SourceError`` (no source imports it back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

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
