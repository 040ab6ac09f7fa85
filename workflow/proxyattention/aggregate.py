"""Stage ``aggregate``: one summary table for the grid, and comparison tables per dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import read_json, write_csv
from .timing import timed_stage

METRICS = ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "top5_accuracy", "val_loss"]
KEYS = ["dataset", "model", "arm", "seed", "cycle"]  # column order of the summary
CELL = ["dataset", "model", "seed", "arm", "cycle"]  # order of a grid cell (layout.grid)


def summarise(cells: list, metrics_paths: list, erased_tables: dict | None = None,
              dataset_infos: dict | None = None) -> pd.DataFrame:
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
        table = (erased_tables or {}).get(tuple(cell))
        if table is not None:
            erased = pd.read_csv(table)
            row["n_erased"] = len(erased)
            row["erased_fraction_mean"] = float(erased["erased_fraction"].mean()) if len(erased) else 0.0
            # Grad-CAM of the true class can be negative everywhere: an all-zero map erases nothing.
            row["n_erased_nothing"] = int((erased["erased_fraction"] == 0).sum())
        else:
            row["n_erased"] = 0
            row["erased_fraction_mean"] = np.nan
            row["n_erased_nothing"] = 0
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
    return frame.sort_values(KEYS, key=lambda s: s.map(_arm_order) if s.name == "arm" else s).reset_index(drop=True)


def _folder_mib(folder: Path) -> float:
    """Disk use of a run folder (checkpoint, maps, erased images), in MiB."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def _arm_order(arm: str) -> int:
    return ["finetune", "baseline", "proxy", "random_erase"].index(arm)


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


def comparison(frame: pd.DataFrame, dataset: str, metric: str = "accuracy") -> pd.DataFrame:
    """Arms side by side at the last cycle, mean and 95% CI over seeds, and paired differences."""
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
        for other in ("baseline", "random_erase"):
            if "proxy" in by_arm and other in by_arm:
                diff = (by_arm["proxy"] - by_arm[other]).dropna()
                mean, lo, hi, n = mean_ci(diff)
                row.update({f"proxy_minus_{other}_mean": mean, f"proxy_minus_{other}_ci_low": lo,
                            f"proxy_minus_{other}_ci_high": hi, f"proxy_minus_{other}_pairs": n})
        rows.append(row)
    return pd.DataFrame(rows)


@timed_stage
def aggregate(cells: list, metrics_paths: list, erased_tables: dict, out_summary, out_tables: dict,
              dataset_infos: dict | None = None) -> None:
    """Write ``summary.csv`` and one comparison table per dataset (``out_tables``: dataset -> path)."""
    frame = summarise(cells, metrics_paths, erased_tables, dataset_infos)
    write_csv(out_summary, frame)
    for dataset, path in out_tables.items():
        write_csv(path, comparison(frame, dataset))
