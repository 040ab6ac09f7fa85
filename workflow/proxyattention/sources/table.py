"""Source ``csv``: a table of ``path,label`` (optional ``split`` and ``mask`` columns).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .base import Item, SourceError

log = logging.getLogger(__name__)


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
