"""Stage ``prepare_masks``: each prepared image's object mask, for the pointing game.

Written beside the prepared images, as ``masks.npy``: uint8 (N, S, S), 1 object, 0 background,
NO_MASK for an image without a mask, resized as the images are (by nearest neighbour, so no new
values); (0, S, S) for a dataset without masks. A stage of its own, reading ``index.csv``: adding
masks to a dataset, or a change here, reruns only the evaluations, never the training.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from ..data.images import (
    MAX_PIXELS,
    BadImageError,
    decode_image,
    decode_mask,
    resize_mask,
)
from ..files.artifacts import NO_MASK
from ..files.atomic import atomic_path
from ..runtime.pool import bounded_map
from ..runtime.timing import images_done, timed_stage
from ..sources import list_items
from ..sources.base import Item


def load_mask(item: Item, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The object mask of ``item`` at (size, size): 0/1, or NO_MASK everywhere without one. A
    mask file must have its image's size (checked against the decoded image)."""
    if item.mask is None:
        return np.full((size, size), NO_MASK, np.uint8)
    if callable(item.mask):  # a source's own masks (torchvision_source checks their size)
        return resize_mask(item.mask() != 0, size)
    mask = decode_mask(item.mask, max_pixels)
    image = decode_image(item.source, max_pixels)
    if mask.shape[:2] != image.shape[:2]:
        raise BadImageError(f"{item.mask}: mask of {mask.shape[1]}x{mask.shape[0]} px for an image of "
                            f"{image.shape[1]}x{image.shape[0]} px ({item.source}); a mask must have its image's size")
    return resize_mask(mask != 0, size)


@timed_stage
def prepare_masks(dataset: dict, index_path, out_masks, threads: int = 4) -> None:
    """masks.npy for the rows of ``index_path`` (prepare's index), from the dataset's masks."""
    items, _ = list_items(dataset)
    size = dataset["image_size"]
    by_source = {it.source: it for it in items if it.mask is not None}
    del items  # only the items with a mask are kept
    index = pd.read_csv(index_path, usecols=["source"], keep_default_na=False)
    with atomic_path(out_masks) as tmp:  # written through a memory map: memory holds the masks in flight
        masks = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                          shape=(len(index) if by_source else 0, size, size))
        if by_source:
            sources = index.source.to_numpy()

            def work(row: int) -> None:
                item = by_source.get(sources[row])
                masks[row] = (load_mask(item, size, dataset.get("max_pixels", MAX_PIXELS)) if item is not None
                              else NO_MASK)

            with ThreadPoolExecutor(max_workers=threads) as pool:
                for _ in bounded_map(pool, work, range(len(index))):
                    pass
        masks.flush()
        del masks
    images_done()
