"""Training-set sizes (``datasets.<name>.train_sizes``) as a level of the grid.

A dataset with ``train_sizes`` runs once per size: its runs, logs, tables and figures are under
``<dataset>/<size>`` (the "run dataset"), where a size is named ``n20pc`` ({per_class: 20}) or
``n200`` ({total: 200}). Dataset names cannot hold a ``/``, so the two parts never mix. One
prepared array serves every size of a dataset (data/splits.py: the sizes are nested prefixes).
"""

from __future__ import annotations


def size_names(spec: dict) -> list[str]:
    """The sizes of one dataset's entry, smallest first (empty without ``train_sizes``)."""
    sizes = spec.get("train_sizes") or {}
    if sizes.get("per_class"):
        return [f"n{n}pc" for n in sorted(sizes["per_class"])]
    if sizes.get("total"):
        return [f"n{n}" for n in sorted(sizes["total"])]
    return []


def run_datasets(config: dict) -> list[str]:
    """Every dataset of the grid: a dataset's name, or ``name/size`` for each of its sizes."""
    out = []
    for name, spec in config["datasets"].items():
        out += [f"{name}/{size}" for size in size_names(spec)] or [name]
    return out


def base_of(run_dataset: str) -> str:
    """The configured dataset a run dataset belongs to (what is prepared)."""
    return run_dataset.partition("/")[0]


def size_of(run_dataset: str) -> str | None:
    """The training size of a run dataset (``n20pc``), None for a dataset without sizes."""
    return run_dataset.partition("/")[2] or None


def nominal(size: str) -> tuple[str, int]:
    """("per_class", 20) for ``n20pc``, ("total", 200) for ``n200``."""
    if size.endswith("pc"):
        return "per_class", int(size[1:-2])
    return "total", int(size[1:])


def epoch_scale(config: dict, run_dataset: str) -> float:
    """How many times the configured epochs a size trains (``training.size_schedule``): 1 under
    ``epochs``; under ``steps``, the largest size's images over this size's (nominal: the sizes as
    written, which are the counts when every class has that many images), so every size takes about
    the optimizer steps the largest takes in the configured epochs."""
    size = size_of(run_dataset)
    if size is None or config["training"].get("size_schedule", "epochs") == "epochs":
        return 1.0
    largest = size_names(config["datasets"][base_of(run_dataset)])[-1]
    return nominal(largest)[1] / nominal(size)[1]


def scaled_epochs(epochs: int, scale: float) -> int:
    """Epochs at a size: the configured epochs times its scale, rounded, at least 1 (0 stays 0)."""
    return 0 if epochs == 0 else max(1, round(epochs * scale))


def size_messages(config: dict, base=".") -> tuple[list[str], list[str]]:
    """(refusals, warnings) about the training sizes, from the listed items (nothing decoded),
    before any job: a size that leaves a class without a training image, or trains on fewer
    images than one batch of a model, is refused; a size whose classes each hold fewer images than
    a batch is a warning. The counts are prepare's: the same split draw and nested prefixes."""
    import numpy as np

    from ..data.splits import draw_split, size_members, train_orders, train_ranks
    from ..sources import list_items

    errors, warnings = [], []
    batches = {name: spec["batch_size"] for name, spec in config["models"].items()}
    for name, ds in config["datasets"].items():
        names = size_names(ds)
        if not names:
            continue
        items, classes = list_items(ds, base)
        labels = np.array([it.label for it in items])
        splits = draw_split(labels, [it.split for it in items], ds["val_fraction"], ds["split_seed"],
                            ds.get("test_fraction", 0.0))
        ranks = train_ranks(labels, splits, ds["split_seed"])
        orders = train_orders(labels, ranks)
        available = np.bincount(labels[ranks >= 0], minlength=len(classes))
        for size in names:
            kind, value = nominal(size)
            members = size_members(ranks, orders, {kind: value})
            counts = np.bincount(labels[members], minlength=len(classes))
            where = f"datasets.{name}.train_sizes.{kind}: {value}"
            empty = [classes[i] for i in np.flatnonzero((counts == 0) & (available > 0))]
            if empty:
                errors.append(f"{where} leaves {len(empty)} of {len(classes)} classes without a training image "
                              f"({', '.join(map(str, empty[:5]))}{', ...' if len(empty) > 5 else ''}); "
                              f"use at least {int((available > 0).sum())} images")
                continue
            total = int(counts.sum())
            small = {m: b for m, b in batches.items() if b > total}
            if small:
                errors.append(f"{where} trains on {total} images, fewer than one batch of "
                              + ", ".join(f"models.{m}.batch_size {b}" for m, b in small.items())
                              + "; use a larger size or a smaller batch")
                continue
            largest = max(batches.values())
            if counts[counts > 0].max() < largest:
                low, high = int(counts[counts > 0].min()), int(counts.max())
                spread = f"{low} each" if low == high else f"{low} to {high}"
                warnings.append(f"{where}: every class has fewer training images ({spread}) than one batch "
                                f"({largest}); {total} images in all")
    return errors, warnings
