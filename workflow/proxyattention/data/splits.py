"""Which prepared rows are in which split: the drawn validation split and subsets, duplicates
across splits, and the sources a stage reads for a split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..files.artifacts import npz_array
from .batches import ArraySource


def draw_split(labels: np.ndarray, splits: list[str], val_fraction: float, seed: int,
               test_fraction: float = 0.0) -> np.ndarray:
    """Assign 'train'/'val' to items without a split: a stratified draw, fixed by ``seed``.

    Items that already carry a split keep it. Each class with at least two
    unsplit items gives round(fraction * n) of them (at least one) to validation.
    With ``test_fraction``, each class then gives that fraction of its training items
    (leaving at least one) to a held-out test split, from a stream of its own: the
    validation draw is the same with or without a test split.
    """
    splits = np.array(splits, dtype=object)
    unsplit = splits == ""
    rng = np.random.default_rng(seed)
    for label in np.unique(labels[unsplit]):
        members = np.flatnonzero(unsplit & (labels == label))
        n_val = max(1, round(val_fraction * len(members))) if len(members) > 1 else 0
        chosen = rng.permutation(members)[:n_val]
        splits[members] = "train"
        splits[chosen] = "val"
    if test_fraction > 0:
        rng = np.random.default_rng([seed, 1])
        train = splits == "train"
        for label in np.unique(labels[train]):
            members = np.flatnonzero(train & (labels == label))
            n_test = min(round(test_fraction * len(members)), len(members) - 1)
            splits[rng.permutation(members)[:n_test]] = "test"
    return splits.astype(str)


SUBSET_STREAMS = {"train": 2, "val": 3}  # each split's subset has a stream of the split seed of its own


def draw_subset(labels: np.ndarray, splits: np.ndarray, subset: dict, seed: int, split: str = "train") -> np.ndarray:
    """Which items to keep when using part of one split (``train`` or ``val``): ``{"per_class": n}``
    keeps n images of each class (all of a smaller class), ``{"total": n}`` keeps n in the classes'
    proportions (largest remainders), drawn once from a stream of the split seed of its own, so
    the training subset is the same with or without a validation subset. Items of other splits
    are always kept."""
    keep = np.ones(len(labels), dtype=bool)
    if not subset:
        return keep
    members_of = splits == split
    classes, counts = np.unique(labels[members_of], return_counts=True)
    if subset.get("per_class") is not None:
        quota = np.minimum(counts, subset["per_class"])
    else:
        total = min(int(subset["total"]), int(counts.sum()))
        exact = total * counts / counts.sum()
        quota = np.floor(exact).astype(int)
        remainders = np.argsort(-(exact - quota), kind="stable")
        quota[remainders[: total - quota.sum()]] += 1
    rng = np.random.default_rng([seed, SUBSET_STREAMS[split]])
    for label, n in zip(classes, quota):
        members = np.flatnonzero(members_of & (labels == label))
        keep[members] = False
        keep[rng.permutation(members)[:n]] = True
    return keep


SPLIT_ORDER = ("train", "val", "test")  # a duplicate stays in the first of these and leaves the later ones


def drop_cross_split_duplicates(index: pd.DataFrame) -> pd.DataFrame:
    """Take out of validation and test every image whose pixels (sha1 of the prepared array)
    equal an image of an earlier split (train before val before test): its split becomes
    ``duplicate`` (in no split; its row stays in images.npy). Returns the (source, reason) rows
    for skipped.csv. Duplicates within one split are left alone."""
    seen: dict[str, tuple[str, str]] = {}  # sha1 -> (split, source) of its first image
    dropped = []
    for split in SPLIT_ORDER:
        members = index[index.split == split]
        for row in members.itertuples():
            if row.sha1 in seen:
                first_split, first_source = seen[row.sha1]
                dropped.append((row.Index, row.source,
                                f"same pixels as {first_source} ({first_split}); left out of {split}"))
        for row in members.itertuples():
            seen.setdefault(row.sha1, (split, row.source))
    if dropped:
        index.loc[[d[0] for d in dropped], "split"] = "duplicate"
    return pd.DataFrame([d[1:] for d in dropped], columns=["source", "reason"])


def training_source(images, index: pd.DataFrame, extra_paths=()) -> tuple[ArraySource, int]:
    """Original training images plus the new images of earlier cycles; and how many are new."""
    train = index[index.split == "train"]
    parts = [(images, train["index"].to_numpy(), train["label"].to_numpy())]
    n_extra = 0
    for path in extra_paths:
        with np.load(path, allow_pickle=False) as data:
            labels = data["labels"]
        if len(labels):  # the images memory-mapped: a batch is read when it is gathered
            parts.append((npz_array(path, "images"), np.arange(len(labels)), labels))
            n_extra += len(labels)
    return ArraySource(parts), n_extra


def split_source(images, index: pd.DataFrame, split: str) -> ArraySource:
    rows = index[index.split == split]
    return ArraySource([(images, rows["index"].to_numpy(), rows["label"].to_numpy())])


def validation_source(images, index: pd.DataFrame) -> ArraySource:
    return split_source(images, index, "val")
