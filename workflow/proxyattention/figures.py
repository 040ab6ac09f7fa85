"""Stage ``figures``: the comparison figures of the report, as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .aggregate import mean_ci, with_shared_finetune  # noqa: E402
from .atomic import atomic_path, read_json  # noqa: E402
from .timing import timed_stage  # noqa: E402

ARM_COLOURS = {"baseline": "tab:blue", "duplicate": "tab:orange", "proxy": "tab:red", "random_erase": "tab:green",
               "finetune": "tab:gray"}


def _save(fig, png_path) -> None:
    for path in (Path(png_path), Path(png_path).with_suffix(".svg")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _panels(frame: pd.DataFrame):
    pairs = list(frame.groupby(["dataset", "model"], sort=False).groups)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.4), squeeze=False)
    return fig, list(zip(pairs, axes[0]))


def colour(arm: str, arms: list) -> str:
    """The default arms keep their colours; other names take the next colours of the cycle."""
    if arm in ARM_COLOURS:
        return ARM_COLOURS[arm]
    others = [a for a in arms if a not in ARM_COLOURS]
    palette = ["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "black"]
    return palette[others.index(arm) % len(palette)] if arm in others else "tab:gray"


def _curve(ax, part: pd.DataFrame, x: str, y: str, arm: str, arms: list) -> None:
    stats = [(xv, *mean_ci(g[y])) for xv, g in part.groupby(x)] if x == "cycle" else None
    if stats is None:  # x differs per seed (time): mean over seeds of both axes
        grouped = part.groupby("cycle")
        stats = [(g[x].mean(), *mean_ci(g[y])) for _, g in grouped]
    xs, mean, lo, hi, _ = map(np.array, zip(*stats))
    ax.plot(xs, mean, marker="o", label=arm, color=colour(arm, arms))
    if np.isfinite(lo).any():
        ax.fill_between(xs, lo, hi, alpha=0.2, color=colour(arm, arms))


def accuracy_by(frame: pd.DataFrame, x: str, out_png, xlabel: str) -> None:
    data = with_shared_finetune(frame)
    fig, panels = _panels(data)
    for (dataset, model), ax in panels:
        part = data[(data.dataset == dataset) & (data.model == model)]
        for arm, arm_part in part.groupby("arm", sort=False):
            _curve(ax, arm_part, x, "accuracy", arm, list(frame.arm.unique()))
        ax.set(title=f"{dataset} / {model}", xlabel=xlabel, ylabel="validation accuracy", ylim=(0, 1))
        if x == "cycle":
            ax.set_xticks(sorted(part.cycle.unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, out_png)


def peak_memory(frame: pd.DataFrame, out_png) -> None:
    data = frame.groupby(["model", "arm"], sort=False).peak_memory_mib.max().unstack("arm")
    kind = ", ".join(sorted(set(frame.peak_memory_kind.dropna())))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(data), 3.4))
    data.plot.bar(ax=ax, color=[colour(a, list(frame.arm.unique())) for a in data.columns], rot=0)
    ax.set(ylabel=f"peak memory (MiB; {kind})", title="peak memory per training run")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out_png)


def time_to_target(frame: pd.DataFrame, out_png) -> None:
    """Cumulative training seconds until each arm first reaches the accuracy every arm reached."""
    data = with_shared_finetune(frame)
    fig, panels = _panels(data)
    for (dataset, model), ax in panels:
        part = data[(data.dataset == dataset) & (data.model == model)]
        mean_acc = part.groupby(["arm", "cycle"]).accuracy.mean()
        target = mean_acc.groupby("arm").max().min()
        arms, seconds = [], []
        for arm, arm_part in part.groupby("arm", sort=False):
            curve = arm_part.groupby("cycle")[["accuracy", "cumulative_train_seconds"]].mean()
            reached = curve[curve.accuracy >= target - 1e-12]
            arms.append(arm)
            seconds.append(reached.cumulative_train_seconds.iloc[0] if len(reached) else np.nan)
        ax.bar(arms, seconds, color=[colour(a, list(frame.arm.unique())) for a in arms])
        ax.set(title=f"{dataset} / {model}: to {target:.3f}", ylabel="cumulative training seconds")
        ax.grid(axis="y", alpha=0.3)
    _save(fig, out_png)


def confusion_matrices(cells: list, metrics_paths: list, out_png) -> None:
    """Confusion matrices of the last cycle of each (dataset, model, arm), first seed."""
    last = max(c[4] for c in cells)
    first_seed = min(c[2] for c in cells)
    chosen = [(c, p) for c, p in zip(cells, metrics_paths) if c[2] == first_seed and c[4] == last]
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 3.6), squeeze=False)
    for ax, (cell, path) in zip(axes[0], chosen):
        m = read_json(path)
        cm = np.asarray(m["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        ax.set(title=f"{cell[1]} {cell[3]}\nacc {m['accuracy']:.3f}", xlabel="predicted", ylabel="true")
        ticks = np.arange(len(m["classes"]))
        ax.set_xticks(ticks, m["classes"], rotation=90, fontsize=6)
        ax.set_yticks(ticks, m["classes"], fontsize=6)
    _save(fig, out_png)


@timed_stage
def examples(images_path, cams_path, erased_npz, selected_csv, classes_path, out_png, n: int = 6) -> None:
    """Original, CAM overlay and erased image for selected images of the most-confused class pairs."""
    from .artifacts import load_cams, load_erased

    images = np.load(images_path, mmap_mode="r")
    classes = read_json(classes_path)["classes"]
    maps, rows, _ = load_cams(cams_path)
    erased, _, erased_rows = load_erased(erased_npz)
    erased_of = {int(r): image for r, image in zip(erased_rows, erased)}  # only images that joined training
    selected = pd.read_csv(selected_csv)
    fig, axes = plt.subplots(3, max(1, min(n, len(rows))), figsize=(2.0 * max(1, min(n, len(rows))), 6.4), squeeze=False)
    if len(rows) == 0:
        axes[0, 0].text(0.5, 0.5, "no images selected in this cycle", ha="center", va="center")
        for ax in axes.ravel():
            ax.axis("off")
        _save(fig, out_png)
        return
    # one image of each confusion in turn (most frequent first), so the grid spreads over classes
    pairs = selected.groupby(["label", "prediction"]).size().sort_values(ascending=False)
    queues = [list(selected.index[(selected.label == label) & (selected.prediction == pred)])
              for (label, pred), _ in pairs.items()]
    order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    for col, pos in enumerate(order[:n]):
        row = selected.loc[pos]
        original = images[int(row["index"])]
        axes[0, col].imshow(original)
        axes[0, col].set_title(f"{classes[int(row.label)]}\nas {classes[int(row.prediction)]}", fontsize=7)
        axes[1, col].imshow(original)
        axes[1, col].imshow(maps[pos], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        if int(row["index"]) in erased_of:
            axes[2, col].imshow(erased_of[int(row["index"])])
        else:
            axes[2, col].imshow(original, alpha=0.3)
            axes[2, col].set_title("empty map:\nnot added", fontsize=7)
    for ax, label in zip(axes[:, 0], ["original", "CAM", "erased"]):
        ax.set_ylabel(label)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, out_png)


@timed_stage
def figures(summary_csv, cells: list, metrics_paths: list, outputs: dict) -> None:
    frame = pd.read_csv(summary_csv, keep_default_na=False, na_values=[""])
    accuracy_by(frame, "cycle", outputs["accuracy_by_cycle"], "cycle")
    accuracy_by(frame, "cumulative_train_seconds", outputs["accuracy_by_time"], "cumulative training seconds")
    peak_memory(frame, outputs["peak_memory"])
    time_to_target(frame, outputs["time_to_target"])
    confusion_matrices(cells, metrics_paths, outputs["confusion_matrices"])
