"""Stage ``aggregate``: one summary table for the grid, and comparison tables per dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import read_json, write_csv
from .timing import timed_stage

log = logging.getLogger(__name__)

METRICS = ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "top5_accuracy", "val_loss"]
KEYS = ["dataset", "model", "arm", "seed", "cycle"]  # column order of the summary
CELL = ["dataset", "model", "seed", "arm", "cycle"]  # order of a grid cell (layout.grid)


def summarise(cells: list, metrics_paths: list, erased_tables: dict | None = None,
              dataset_infos: dict | None = None, arms: list | None = None) -> pd.DataFrame:
    """One row per (dataset, model, arm, seed, cycle) with every metric, time and memory.

    ``cells`` and ``metrics_paths`` are parallel. Cumulative time and images add
    the shared finetune (cycle 0) to each arm's cycles. ``erased_tables`` maps a
    cell to its ``erased.csv`` for the arms that erase; ``dataset_infos`` a dataset
    to its prepared ``classes.json`` (for the count of skipped bad images).
    """
    skipped = {d: read_json(p)["n_skipped"] for d, p in (dataset_infos or {}).items()}
    rows = []
    for cell, path in zip(cells, metrics_paths):
        m = read_json(path)
        row = dict(zip(CELL, cell))
        row.update({k: m.get(k, np.nan) for k in METRICS})
        row.update({k: m.get(k) for k in ("train_seconds", "wall_seconds", "epochs", "images_seen", "n_train_extra",
                                          "peak_memory_mib", "peak_memory_kind", "device", "precision", "ran",
                                          "stop_reason", "n_val")})
        row["run_dir_mib"] = _folder_mib(Path(path).parent)
        row["n_skipped_images"] = skipped.get(row["dataset"], 0)
        row.update(added_counts((erased_tables or {}).get(tuple(cell))))
        rows.append(row)
    frame = pd.DataFrame(rows)[KEYS + [k for k in rows[0] if k not in KEYS]]
    finetune = frame[frame.cycle == 0].set_index(["dataset", "model", "seed"])
    cum_seconds, cum_images = [], []
    for _, r in frame.iterrows():
        base = finetune.loc[(r.dataset, r.model, r.seed)]
        same = frame[(frame.dataset == r.dataset) & (frame.model == r.model) & (frame.seed == r.seed)
                     & (frame.arm == r.arm) & (frame.cycle > 0) & (frame.cycle <= r.cycle)]
        cum_seconds.append(base.train_seconds + (same.train_seconds.sum() if r.cycle > 0 else 0.0))
        cum_images.append(base.images_seen + (same.images_seen.sum() if r.cycle > 0 else 0))
    frame["cumulative_train_seconds"] = cum_seconds
    frame["cumulative_images_seen"] = cum_images
    order = ["finetune", *(arms or DEFAULT_ARMS)]
    order += sorted(set(frame.arm) - set(order))
    return frame.sort_values(KEYS, key=lambda s: s.map(order.index) if s.name == "arm" else s).reset_index(drop=True)


def added_counts(table) -> dict:
    """What a cycle added to training, from its ``erased.csv`` (None: an arm that adds nothing).

    n_selected: images the selection rule chose; n_empty_maps: of those, maps that were
    constant (nothing to erase); n_added: images that joined training; n_erased: added with
    at least one pixel changed; n_added_unchanged: added with none changed (the duplicate
    arm's, or proxy.empty_maps: keep).
    """
    if table is None:
        return {"n_selected": 0, "n_empty_maps": 0, "empty_map_fraction": np.nan, "n_added": 0, "n_erased": 0,
                "n_added_unchanged": 0, "erased_fraction_mean": np.nan}
    erased = pd.read_csv(table, keep_default_na=False)
    added = erased[erased["added"].astype(bool)]
    changed = added["erased_fraction"] > 0
    n = len(erased)
    return {
        "n_selected": n,
        "n_empty_maps": int(erased["empty_map"].astype(bool).sum()),
        "empty_map_fraction": float(erased["empty_map"].astype(bool).mean()) if n else np.nan,
        "n_added": len(added),
        "n_erased": int(changed.sum()),
        "n_added_unchanged": int((~changed).sum()),
        "erased_fraction_mean": float(added.loc[changed, "erased_fraction"].mean()) if changed.any() else np.nan,
    }


def _folder_mib(folder: Path) -> float:
    """Disk use of a run folder (checkpoint, maps, erased images), in MiB."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def with_shared_finetune(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy each cycle-0 row into every arm, so curves per arm start at the shared finetune.
    With no cycles after the finetune (``cycles: 0``), the finetune rows stay as they are."""
    arms = [a for a in frame.arm.unique() if a != "finetune"] or ["finetune"]
    zero = frame[frame.cycle == 0]
    copies = [zero.assign(arm=a) for a in arms]
    return pd.concat([frame[frame.cycle > 0], *copies], ignore_index=True)


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and the t-interval's half width over seeds (NaN with fewer than two values)."""
    from scipy import stats

    x = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    if n < 2:
        return float(x.mean()), np.nan, np.nan, n
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half), n


DEFAULT_ARMS = ["baseline", "duplicate", "proxy", "random_erase"]
# The default arms' paired differences over seeds (arms.comparisons gives them for any config):
# every arm against baseline, and proxy against its controls (duplicate: the same images
# unchanged; random_erase: the same area at a random place).
COMPARISONS = [("duplicate", "baseline"), ("proxy", "baseline"), ("random_erase", "baseline"),
               ("proxy", "duplicate"), ("proxy", "random_erase")]


def comparison(frame: pd.DataFrame, dataset: str, metric: str = "accuracy",
               comparisons: list | None = None) -> pd.DataFrame:
    """Arms side by side at the last cycle, mean and 95% CI over seeds, and the paired
    differences of ``comparisons`` ((arm, other) pairs; the default arms' when None)."""
    data = frame[frame.dataset == dataset]
    last = data.cycle.max()
    rows = []
    for model, per_model in data.groupby("model", sort=False):
        final = per_model[per_model.cycle == last]
        finetune = per_model[per_model.cycle == 0]
        row = {"dataset": dataset, "model": model, "cycle": int(last), "metric": metric}
        for arm, part in [("finetune", finetune)] + list(final.groupby("arm", sort=False)):
            mean, lo, hi, n = mean_ci(part[metric])
            row.update({f"{arm}_mean": mean, f"{arm}_ci_low": lo, f"{arm}_ci_high": hi, f"{arm}_n": n})
            row[f"{arm}_train_seconds_mean"] = float(per_model[per_model.arm.isin([arm, "finetune"])]
                                                     .groupby("seed").train_seconds.sum().mean())
        by_arm = final.pivot_table(index="seed", columns="arm", values=metric)
        for arm, other in (COMPARISONS if comparisons is None else comparisons):
            if arm in by_arm and other in by_arm:
                diff = (by_arm[arm] - by_arm[other]).dropna()
                mean, lo, hi, n = mean_ci(diff)
                row.update({f"{arm}_minus_{other}_mean": mean, f"{arm}_minus_{other}_ci_low": lo,
                            f"{arm}_minus_{other}_ci_high": hi, f"{arm}_minus_{other}_pairs": n})
        rows.append(row)
    return pd.DataFrame(rows)


@timed_stage
def aggregate(cells: list, metrics_paths: list, erased_tables: dict, out_summary, out_tables: dict,
              dataset_infos: dict | None = None, arms: list | None = None, comparisons: list | None = None) -> None:
    """Write ``summary.csv`` and one comparison table per dataset (``out_tables``: dataset -> path)."""
    frame = summarise(cells, metrics_paths, erased_tables, dataset_infos, arms)
    for r in frame[frame.empty_map_fraction > 0.5].itertuples():
        log.warning("%s/%s seed %s %s cycle %s: %d of %d maps were empty (nothing to erase)", r.dataset, r.model,
                    r.seed, r.arm, r.cycle, r.n_empty_maps, r.n_selected)
    write_csv(out_summary, frame)
    for dataset, path in out_tables.items():
        write_csv(path, comparison(frame, dataset, comparisons=comparisons))
