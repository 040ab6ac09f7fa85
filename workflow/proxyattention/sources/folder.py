"""Source ``imagefolder``: a tree of class folders, optionally with a parallel tree of object masks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .base import IMAGE_SUFFIXES, Item, SourceError


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
