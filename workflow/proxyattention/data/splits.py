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


def train_ranks(labels: np.ndarray, splits: np.ndarray, seed: int) -> np.ndarray:
    """Each training item's place in its class's seeded permutation (-1 for other splits): the
    permutation draw_subset takes a prefix of, so ``rank < n`` is the ``{per_class: n}`` subset."""
    ranks = np.full(len(labels), -1, dtype=np.int64)
    train = np.asarray(splits) == "train"
    rng = np.random.default_rng([seed, SUBSET_STREAMS["train"]])
    for label in np.unique(labels[train]):
        members = np.flatnonzero(train & (labels == label))
        ranks[rng.permutation(members)] = np.arange(len(members))
    return ranks


def seat_order(counts: np.ndarray) -> np.ndarray:
    """The classes in the order they receive images as a ``{total: n}`` size grows, one image at a
    time (Sainte-Lague's divisor rule: next the class with the largest count / (2 q + 1), ties to the
    lower label; a class whose images are all taken drops out). A size of n images takes the first n
    seats, so every class's count never decreases as n grows, and tracks the classes' proportions."""
    import heapq

    counts = np.asarray(counts, dtype=np.int64)
    heap = [(-float(n), label) for label, n in enumerate(counts) if n > 0]  # (-count / (2 q + 1), label)
    heapq.heapify(heap)
    taken = np.zeros(len(counts), dtype=np.int64)
    order = np.empty(int(counts.sum()), dtype=np.int64)
    for seat in range(len(order)):
        _, label = heapq.heappop(heap)
        order[seat] = label
        taken[label] += 1
        if taken[label] < counts[label]:
            heapq.heappush(heap, (-counts[label] / (2 * taken[label] + 1), label))
    return order


def train_orders(labels: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Each training item's seat (seat_order) among every training item (-1 for other splits):
    the ``{total: n}`` size is the items with ``order < n``; within a class, seats follow ``ranks``,
    so every total size is nested in the larger ones and agrees with the per-class prefixes."""
    train = ranks >= 0
    classes = np.unique(labels[train])
    counts = np.array([int((train & (labels == c)).sum()) for c in classes], dtype=np.int64)
    seats = seat_order(counts)
    orders = np.full(len(labels), -1, dtype=np.int64)
    for i, c in enumerate(classes):
        members = np.flatnonzero(train & (labels == c))
        orders[members[np.argsort(ranks[members])]] = np.flatnonzero(seats == i)
    return orders


def size_members(ranks: np.ndarray, orders: np.ndarray, size: dict) -> np.ndarray:
    """Which items a training size (``{"per_class": n}`` or ``{"total": n}``) trains on."""
    if size.get("per_class") is not None:
        return (ranks >= 0) & (ranks < int(size["per_class"]))
    return (orders >= 0) & (orders < int(size["total"]))


def size_of_name(name: str) -> dict:
    """``n20pc`` -> {"per_class": 20}; ``n200`` -> {"total": 200} (settings/sizes.py names them)."""
    if name.endswith("pc"):
        return {"per_class": int(name[1:-2])}
    return {"total": int(name[1:])}


def restrict_to_size(index: pd.DataFrame, size: str | None, where: str = "index.csv") -> pd.DataFrame:
    """The index with the training rows outside training size ``size`` (a name such as ``n20pc``)
    moved to split ``unused``: trained on by no job of that size. None: the index as it is."""
    if not size:
        return index
    if "train_rank" not in index or "train_order" not in index:
        raise ValueError(f"{where} has no train_rank/train_order columns: it was prepared without "
                         f"train_sizes; prepare the dataset again (delete its prepared folder)")
    members = size_members(index["train_rank"].to_numpy(), index["train_order"].to_numpy(), size_of_name(size))
    index = index.copy()
    index.loc[(index.split == "train").to_numpy() & ~members, "split"] = "unused"
    return index


def verdict_split(index: pd.DataFrame) -> str:
    """The split the verdicts use: the held-out test split when the dataset has one, else validation."""
    return "test" if (index.split == "test").any() else "val"


CURVE_STREAM = 5  # the epoch sample's own stream (of a fixed seed: the same rows for every run)


def curve_sample(index: pd.DataFrame, n) -> np.ndarray:
    """Prepared rows (sorted) of the fixed sample of the verdicts' split that every epoch's curve
    point uses (``training.epoch_sample``): ``n`` images, stratified (each class its share,
    largest remainders) and drawn from a fixed stream, so the same rows for every epoch, arm, seed,
    model and training size; the whole split for ``"all"`` or an ``n`` at least its size; none for 0."""
    members = index[index.split == verdict_split(index)]
    rows, labels = members["index"].to_numpy(np.int64), members["label"].to_numpy()
    if n == "all" or int(n) >= len(rows):
        return np.sort(rows)
    if int(n) == 0:
        return np.zeros(0, np.int64)
    keep = draw_subset(labels, np.full(len(rows), "train"), {"total": int(n)}, CURVE_STREAM)
    return np.sort(rows[keep])


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
