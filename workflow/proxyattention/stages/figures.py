"""Stage ``figures``: the comparison figures of the report, as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..analysis.power import mean_ci
from ..analysis.reach import censored_median, cost_of, curve_of, reach_target, sampled, split_of, with_shared_finetune
from ..analysis.verdicts import (
    ATTENTION_METRICS,
    COMPARISONS,
    EFFECT_OF_INTEREST,
    MIN_PAIRS,
    answers,  # noqa: E402
    verdict_split,
    verdicts,
)
from ..analysis.verdicts import paired_differences as per_seed_differences  # noqa: E402
from ..files.atomic import atomic_path, read_json, write_csv  # noqa: E402
from ..runtime.timing import timed_stage  # noqa: E402

ARM_COLOURS = {"baseline": "tab:blue", "duplicate": "tab:orange", "proxy": "tab:red", "random_erase": "tab:green",
               "erasing": "tab:purple", "finetune": "tab:gray"}


def _save(fig, png_path, stamp: str = "") -> None:
    """PNG and SVG of ``fig``, with ``stamp`` (what made it: provenance.summary_line) in a footer."""
    if stamp:
        fig.text(0.0, -0.01, stamp, fontsize=6, color="0.4", ha="left", va="top")
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
    """Each seed as a thin line, the mean over seeds as a thick one; the 95% band only from
    three seeds on (with two, a t-interval spans nearly everything and hides the points)."""
    c = colour(arm, arms)
    for _, seed_part in part.groupby("seed"):
        seed_part = seed_part.sort_values("cycle")
        ax.plot(seed_part[x], seed_part[y], color=c, alpha=0.35, lw=0.8, marker=".", ms=3)
    stats = [(g[x].mean(), *mean_ci(g[y])) for _, g in part.groupby("cycle")]
    xs, mean, lo, hi, n = map(np.array, zip(*stats))
    ax.plot(xs, mean, marker="o", label=arm, color=c, lw=2)
    if (n >= 3).all() and np.isfinite(lo).any():
        ax.fill_between(xs, lo, hi, alpha=0.15, color=c)


def accuracy_by(frame: pd.DataFrame, x: str, out_png, xlabel: str, stamp: str = "") -> None:
    data = with_shared_finetune(frame)
    fig, panels = _panels(data)
    for (dataset, model), ax in panels:
        part = data[(data.dataset == dataset) & (data.model == model)]
        metric, ylabel = curve_of(frame, dataset) if sampled(frame, dataset) else split_of(frame, dataset)
        for arm, arm_part in part.groupby("arm", sort=False):
            _curve(ax, arm_part, x, metric, arm, list(frame.arm.unique()))
        ax.set(title=f"{dataset} / {model}", xlabel=xlabel, ylabel=ylabel)
        if x == "cycle":
            ax.set_xticks(sorted(part.cycle.unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()  # room for each panel's y label: side by side they overlapped the panel before
    _save(fig, out_png, stamp)


def paired_differences(frame: pd.DataFrame, comparisons: list, out_png, stamp: str = "",
                       stop_rule: bool = False, effect_of_interest: float = EFFECT_OF_INTEREST):
    """Forest plot: every (dataset, model, comparison) at the last cycle, the per-seed
    differences as dots, their mean and 95% t-interval, ticks at plus and minus the minimum
    detectable effect, and the Holm-adjusted verdict word at the right; all in points. The axis
    follows the differences and intervals (an MDE beyond it is said, not drawn). Returns the
    axis limits."""
    rows = pd.concat([verdicts(frame, d, comparisons, stop_rule, effect_of_interest)
                      for d in frame.dataset.unique()], ignore_index=True)
    rows = rows[~rows.metric.isin([*ATTENTION_METRICS, "road_combined"])].reset_index(drop=True)  # accuracy's rows
    fig, ax = plt.subplots(figsize=(8.0, 0.9 + 0.36 * max(1, len(rows))))
    if rows.empty:
        ax.text(0.5, 0.5, "no comparisons: the config has a single arm", ha="center", va="center")
        ax.axis("off")
        _save(fig, out_png, stamp)
        return
    ys = np.arange(len(rows))[::-1]
    points = 100.0  # accuracy differences in points, as the tables and answers give them
    seen = []  # what the axis must show: every seed's difference, mean and interval (never the MDE alone)
    for y, r in zip(ys, rows.itertuples()):
        part = frame[(frame.dataset == r.dataset) & (frame.model == r.model)]
        diff = per_seed_differences(part, r.arm, r.control, r.metric) * points
        seen += [*diff.values, r.mean_difference * points]
        if r.n_pairs >= MIN_PAIRS and np.isfinite(r.ci_low):
            seen += [r.ci_low * points, r.ci_high * points]
    seen = np.asarray([v for v in seen if np.isfinite(v)] or [0.0])
    reach = max(abs(seen).max() * 1.15, 0.05)  # symmetric about 0, a little beyond the farthest value
    for y, r in zip(ys, rows.itertuples()):
        part = frame[(frame.dataset == r.dataset) & (frame.model == r.model)]
        diff = per_seed_differences(part, r.arm, r.control, r.metric) * points
        c = colour(r.arm, list(frame.arm.unique()))
        ax.scatter(diff.values, np.full(len(diff), y), s=12, color="0.45", zorder=2)
        if r.n_pairs >= MIN_PAIRS and np.isfinite(r.ci_low):
            ax.plot([r.ci_low * points, r.ci_high * points], [y, y], color=c, lw=2.2, zorder=1)
        ax.scatter([r.mean_difference * points], [y], marker="D", s=36, color=c, zorder=3)
        mde = r.mde * points
        if np.isfinite(mde) and mde <= reach:  # what this row could have detected, either way
            ax.scatter([-mde, mde], [y, y], marker="|", s=90, color="black", zorder=2)
        if r.n_pairs < MIN_PAIRS:
            note = f"n={r.n_pairs}: no verdict (needs {MIN_PAIRS} seed pairs)"
        else:
            shown = ("undefined" if not np.isfinite(mde) else f"{mde:.2f} pts" if mde <= reach
                     else f"{mde:.2f} pts, off the axis")
            note = f"n={r.n_pairs}: {r.verdict_holm} (MDE {shown})"
        ax.annotate(note, (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=7)
    ax.set_xlim(-reach, reach)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [f"{r.dataset} / {r.model}: {r.comparison}" for r in rows.itertuples()], fontsize=7)
    splits = " / ".join(sorted(set(rows.split)))
    where = splits if splits.startswith("the ") else f"the {splits} split"  # "the official test split of ..."
    ax.set(xlabel=f"difference in accuracy (points) at cycle {int(rows.cycle.max())}, paired by seed, on {where}",
           title=f"each arm minus its control: seeds (dots), mean (diamond), 95% interval (bar, from {MIN_PAIRS} "
                 "seed pairs on),\n| at ± the minimum detectable effect (80% power); words Holm-adjusted")
    ax.title.set_fontsize(9)
    ax.grid(axis="x", alpha=0.3)
    limits = ax.get_xlim()
    _save(fig, out_png, stamp)
    return limits


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _range(values: pd.Series) -> list:
    """The whiskers from the mean to the minimum and maximum, never negative (the mean of equal
    values can land a rounding error outside them, which matplotlib refuses)."""
    mean = values.mean()
    return [[max(0.0, mean - values.min())], [max(0.0, values.max() - mean)]]


def accuracy_cost(frame: pd.DataFrame, out_png, stamp: str = "") -> None:
    """Question 2, the ViT beside the CNNs: every model x arm at the last cycle as a point,
    accuracy against cumulative cost (training and the Proxy Attention stages) and against peak
    memory, one row per dataset; small marks are the seeds, large ones their mean with the seeds'
    range as whiskers."""
    last = frame[frame.cycle == frame.cycle.max()]
    if frame.cycle.max() == 0:
        last = frame
    datasets = list(last.dataset.unique())
    models = list(frame.model.unique())
    arms = list(frame.arm.unique())
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10.5, 3.6 * len(datasets)), squeeze=False)
    cost, cost_label = cost_of(frame)
    for row, dataset in zip(axes, datasets):
        part = last[last.dataset == dataset]
        metric, ylabel = split_of(frame, dataset)
        for ax, x, label in ((row[0], cost, cost_label), (row[1], "peak_memory_mib", "peak memory of a training run (MiB)")):
            for (model, arm), g in part.groupby(["model", "arm"], sort=False):
                m, c = MARKERS[models.index(model) % len(MARKERS)], colour(arm, arms)
                ax.scatter(g[x], g[metric], marker=m, color=c, s=14, alpha=0.45)
                ax.errorbar(g[x].mean(), g[metric].mean(), fmt=m, color=c, ms=8, mec="black", mew=0.6,
                            xerr=_range(g[x]), yerr=_range(g[metric]))
            ax.set(xlabel=label, ylabel=ylabel, title=dataset)
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=MARKERS[i % len(MARKERS)], color="0.3", ls="", label=m)
               for i, m in enumerate(models)]
    handles += [plt.Line2D([], [], marker="o", color=colour(a, arms), ls="", label=a)
                for a in arms if a in set(last.arm)]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, out_png, stamp)


def _weights_label(part: pd.DataFrame) -> str:
    values = part.pretrained.dropna().astype(str).unique() if "pretrained" in part else []
    return ", ".join(values) if len(values) else "weights not recorded"


def reliability(per_image_paths: list, split: str = "val", bins: int = 15) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean confidence, accuracy) per equal-width confidence bin, pooled over the files, and
    the number of images."""
    confidence, correct = [], []
    for path in per_image_paths:
        with np.load(path) as f:
            key = split if f"{split}_p_top" in f else "val"
            confidence.append(f[f"{key}_p_top"].astype(np.float64))
            correct.append(f[f"{key}_prediction"] == f[f"{key}_label"])
    confidence, correct = np.concatenate(confidence), np.concatenate(correct)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    conf = np.array([confidence[which == b].mean() if (which == b).any() else np.nan for b in range(bins)])
    acc = np.array([correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)])
    return conf, acc, len(confidence)


def attention_measures(frame: pd.DataFrame, out_png, stamp: str = "", per_image: dict | None = None) -> None:
    """Question 2 side by side, one row per dataset: occlusion curves per model x arm (mean over
    seeds at the last cycle), occlusion area against accuracy, ECE and cost per model x arm, and
    (with per-image files) reliability diagrams."""
    last = frame[frame.cycle == frame.cycle.max()] if frame.cycle.max() > 0 else frame
    datasets = list(last.dataset.unique())
    models, arms = list(frame.model.unique()), list(frame.arm.unique())
    fig, axes = plt.subplots(len(datasets), 4, figsize=(19, 3.9 * len(datasets)), squeeze=False)
    levels = [0, 20, 40, 60, 80]
    cost, cost_label = cost_of(frame)
    for row, dataset in zip(axes, datasets):
        part = last[last.dataset == dataset]
        metric, ylabel = split_of(frame, dataset)
        if "occlusion_auc" not in part or part.occlusion_auc.isna().all():
            for ax in row:
                ax.text(0.5, 0.5, "no occlusion measure in this summary\n(evaluation.occlusion)", ha="center",
                        va="center")
                ax.axis("off")
            continue
        n_occ = int(part.n_occlusion.max())
        labels = []
        for (model, arm), g in part.groupby(["model", "arm"], sort=False):
            m, c = MARKERS[models.index(model) % len(MARKERS)], colour(arm, arms)
            style = ["-", "--", ":", "-."][models.index(model) % 4]
            row[0].plot(levels, [g[f"occlusion_{lv}"].mean() for lv in levels], marker=m, color=c, ls=style, ms=4,
                        label=f"{model} / {arm}")
            row[1].errorbar(g[metric].mean(), g.occlusion_auc.mean(), fmt=m, color=c, ms=8, mec="black", mew=0.6,
                            xerr=_range(g[metric]), yerr=_range(g.occlusion_auc))
            labels.append((f"{model}\n{arm}", g.ece.mean(), g[cost].mean(), c))
        row[0].set(xlabel="% of the 14 x 14 patches set to the mean colour", ylabel="accuracy",
                   title=f"{dataset}: occlusion ({n_occ} images each)")
        row[0].legend(fontsize=6)
        row[1].set(xlabel=ylabel, ylabel="occlusion area (mean accuracy over 0-80%)",
                   title="occlusion area against accuracy")
        ys = np.arange(len(labels))
        row[2].barh(ys, [v[1] for v in labels], color=[v[3] for v in labels], alpha=0.7)
        row[2].set_yticks(ys, [v[0] for v in labels], fontsize=6)
        row[2].set(xlabel=f"expected calibration error (15 bins, {int(part.n_calibration.max())} images; lower is "
                          "better)", title="calibration")
        if per_image:
            for (model, arm), g in part.groupby(["model", "arm"], sort=False):
                files = [per_image[k] for k in per_image if k[0] == dataset and k[1] == model and k[3] == arm
                         and k[4] == int(g.cycle.iloc[0])]
                if files:
                    conf, acc, n = reliability(files, "test" if metric == "test_accuracy" else "val")
                    row[3].plot(conf, acc, marker=MARKERS[models.index(model) % len(MARKERS)], ms=3,
                                color=colour(arm, arms), label=f"{model} / {arm} ({n})")
            row[3].plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
            row[3].set(xlabel="confidence (top probability)", ylabel="accuracy", title="reliability (pooled seeds)")
            row[3].legend(fontsize=6)
        else:
            row[3].barh(ys, [v[2] for v in labels], color=[v[3] for v in labels], alpha=0.7)
            row[3].set_yticks(ys, [v[0] for v in labels], fontsize=6)
            row[3].set(xlabel=cost_label, title="cost")
        weights = "; ".join(f"{model}: {_weights_label(part[part.model == model])}" for model in models
                            if model in set(part.model))
        row[0].annotate(f"started from: {weights}", (0, -0.28), xycoords="axes fraction", fontsize=7)
        for ax in row:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out_png, stamp)


def peak_memory(frame: pd.DataFrame, out_png, stamp: str = "") -> None:
    data = frame.groupby(["model", "arm"], sort=False).peak_memory_mib.max().unstack("arm")
    kind = ", ".join(sorted(set(frame.peak_memory_kind.dropna())))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(data), 3.4))
    data.plot.bar(ax=ax, color=[colour(a, list(frame.arm.unique())) for a in data.columns], rot=0)
    ax.set(ylabel=f"peak memory (MiB; {kind})", title="peak memory per training run")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # beside the bars
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out_png, stamp)


def time_to_target(frame: pd.DataFrame, out_png, target_accuracy: float | None = None, stamp: str = "") -> None:
    """Question 3: per (dataset, model), each arm's seeds as dots at the cost (every stage the
    arm paid) and images seen until they first reached the target, the censored median as a
    bar; seeds that never reached it are drawn at the right edge as "not reached"."""
    reach = reach_target(frame, target_accuracy)
    _, cost_label = cost_of(frame)
    pairs = list(reach.groupby(["dataset", "model"], sort=False).groups)
    arms = list(frame.arm.unique())
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10.0, 0.8 + (0.45 * len(arms) + 0.8) * len(pairs)),
                             squeeze=False)
    for row, (dataset, model) in zip(axes, pairs):
        part = reach[(reach.dataset == dataset) & (reach.model == model)]
        names = [a for a in arms if a in set(part.arm)]
        for ax, x, label in ((row[0], "seconds", cost_label), (row[1], "images_seen", "cumulative images seen")):
            edge = np.nanmax(part[x].values) * 1.15 if part[x].notna().any() else 1.0
            for y, arm in enumerate(names[::-1]):
                g, c = part[part.arm == arm], colour(arm, arms)
                done = g[g.reached]
                median = censored_median(g[x], g.reached)
                if np.isfinite(median):  # the bar: the median over all seeds, not-reached ranked last
                    ax.barh(y, median, color=c, alpha=0.35, height=0.6)
                if len(done):
                    ax.scatter(done[x], np.full(len(done), y), color=c, s=18, zorder=3)
                missing = int((~g.reached).sum())
                if missing:
                    ax.scatter([edge] * missing, np.full(missing, y), marker="x", color=c, s=30, zorder=3)
                    ax.annotate(f"not reached: {missing} of {len(g)}", (edge, y), xytext=(6, 0),
                                textcoords="offset points", va="center", fontsize=7)
            ax.set_yticks(range(len(names)), names[::-1], fontsize=8)
            ax.set_xlim(0, edge * 1.45)
            ax.locator_params(axis="x", nbins=5)  # tick labels of large counts must not run together
            _, accuracy_label = curve_of(frame, dataset)
            ax.set(xlabel=label, title=f"{dataset} / {model}: to {part.target.iloc[0]:.3f},\n{accuracy_label}\n"
                                       "(bar: median over all seeds, a seed not reaching it counted last)")
            ax.title.set_fontsize(8)
            ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, out_png, stamp)


def _sized(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of datasets with training sizes, with ``base`` (the dataset a size is of)."""
    if "size" not in frame:
        return frame.iloc[0:0].assign(base="")
    sized = frame[frame["size"].fillna("").astype(str) != ""].copy()
    sized["base"] = sized.dataset.str.partition("/")[0]
    return sized


def _size_axis(ax, part: pd.DataFrame) -> None:
    """A log axis of training images per class, ticked at the sizes, each named."""
    ticks = part.drop_duplicates("size").sort_values("train_per_class")
    ax.set_xscale("log")
    ax.set_xticks(ticks.train_per_class, [f"{v:g}\n{s}" for v, s in zip(ticks.train_per_class, ticks["size"])],
                  fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("training images per class (log)")
    ax.grid(alpha=0.3)


def _size_panels(frame: pd.DataFrame):
    """A figure with a panel per (dataset with sizes, model): (figure, [((base, model), rows, axis)])."""
    sized = _sized(frame)
    pairs = list(sized.groupby(["base", "model"], sort=False).groups)
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 3.8), squeeze=False)
    return fig, [((base, model), sized[(sized.base == base) & (sized.model == model)], ax)
                 for (base, model), ax in zip(pairs, axes[0])]


def effect_by_size(frame: pd.DataFrame, comparisons: list, out_png, stamp: str = "", stop_rule: bool = False,
                   effect_of_interest: float = EFFECT_OF_INTEREST) -> None:
    """Less data: per (dataset, model), each comparison's mean paired difference in accuracy (points,
    on the verdicts' split, at the last cycle) with its 95% t-interval against the training images
    per class of each size (log axis); each size is its own Holm family, and the word beside a
    point is that size's Holm verdict (n.e.: no evidence at this n)."""
    fig, panels = _size_panels(frame)
    arms = list(frame.arm.unique())
    for (base, model), part, ax in panels:
        rows = []
        for dataset in part.dataset.unique():
            metric, _ = verdict_split(frame[frame.dataset == dataset], stop_rule)
            table = verdicts(frame[frame.model == model], dataset, comparisons, stop_rule, effect_of_interest)
            table = table[table.metric == metric].assign(train_per_class=part[part.dataset == dataset]
                                                         .train_per_class.iloc[0])
            rows.append(table)
        table = pd.concat(rows, ignore_index=True)
        names = list(dict.fromkeys(table.comparison))
        markers = {}
        means = 100 * table.mean_difference.abs()
        # the axis follows the differences, not intervals a handful of seeds leaves wide: an interval
        # past the edge is cut there, with an arrow, and the clipped note says so
        edge = max(1.0, 4 * float(means.max()) if means.notna().any() else 1.0)
        bounds = 100 * pd.concat([table.ci_low, table.ci_high]).abs()
        edge = min(max(edge, float(bounds[np.isfinite(bounds)].max()) * 1.1 if np.isfinite(bounds).any() else edge),
                   max(edge, 10.0))
        clipped = False
        for k, name in enumerate(names):
            t = table[table.comparison == name].sort_values("train_per_class")
            x = t.train_per_class * 1.06 ** (k - (len(names) - 1) / 2)  # side by side at each size
            y, lo, hi = 100 * t.mean_difference, 100 * t.ci_low, 100 * t.ci_high
            c = colour(t.control.iloc[0], arms)  # colour: the control; marker: the arm
            m = markers.setdefault(t.arm.iloc[0], "os^Dvp*"[len(markers) % 7])
            lo_c, hi_c = np.clip(lo.fillna(y), -edge, edge), np.clip(hi.fillna(y), -edge, edge)
            clipped |= bool(((lo < -edge) | (hi > edge)).any())
            ax.errorbar(x, y, yerr=[y - lo_c, hi_c - y], fmt=f"{m}-", color=c, ms=4, lw=1, capsize=2, label=name)
            for xi, yi, word in zip(x, y, t.verdict_holm):
                if word != "no evidence at this n":
                    ax.annotate(word, (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=6, color=c)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_ylim(-edge * 1.05, edge * 1.05)
        _size_axis(ax, part)
        _, split = split_of(frame, part.dataset.iloc[0])
        note = "; intervals cut at the axis" if clipped else ""
        ax.text(0.01, 0.01, f"no word: no evidence at this n (Holm){note}", transform=ax.transAxes, fontsize=6,
                color="0.3")
        ax.set(ylabel=f"difference in accuracy (points)\n{split.replace(chr(10), ' ')}",
               title=f"{base} / {model}: paired differences by training size\n"
                     f"(95% t-interval over seeds, last cycle)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    _save(fig, out_png, stamp)


def learning_curves(frame: pd.DataFrame, out_png, stamp: str = "") -> None:
    """Less data: per (dataset, model), each arm's accuracy on the verdicts' split at the last
    cycle against the training images per class (log axis), seeds as dots, the mean as a line, a
    95% t-band from three seeds on; the shared finetune (cycle 0) dashed."""
    fig, panels = _size_panels(frame)
    arms = list(frame.arm.unique())
    for (base, model), part, ax in panels:
        metric, label = split_of(frame, part.dataset.iloc[0])
        last = part.groupby("dataset").cycle.transform("max")
        shown = pd.concat([part[(part.cycle == last) & (part.arm != "finetune")], part[part.cycle == 0]])
        for arm, g in shown.groupby("arm", sort=False):
            c = colour(arm, arms)
            ax.scatter(g.train_per_class, 100 * g[metric], color=c, s=8, alpha=0.4)
            stats = [(x, *mean_ci(100 * gg[metric])) for x, gg in g.groupby("train_per_class")]
            xs, mean, lo, hi, n = map(np.array, zip(*stats))
            name = "finetune (cycle 0)" if arm == "finetune" else arm
            ax.plot(xs, mean, marker="o", color=c, lw=1.5 if arm != "finetune" else 1.0,
                    ls="--" if arm == "finetune" else "-", label=name)
            if (n >= 3).all() and np.isfinite(lo).any():
                ax.fill_between(xs, lo, hi, alpha=0.12, color=c)
        _size_axis(ax, part)
        ax.set(ylabel=f"{label.replace(chr(10), ' ')} (%)", title=f"{base} / {model}: accuracy by training size\n"
                                                             f"(last cycle; finetune dashed)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    _save(fig, out_png, stamp)


def confusion_matrices(cells: list, metrics_paths: list, out_png, stamp: str = "") -> None:
    """Confusion matrices of the last cycle of each (dataset, model, arm), first seed, on the
    held-out test split when the dataset has one (the verdicts' split), else on validation: one
    row per (dataset, model), one column per arm, the seed and cycle said above them; classes in
    the prepared order (a dataset's ``classes:`` list sets it; an ImageFolder's is its folders')."""
    last = max(c[4] for c in cells)
    first_seed = min(c[2] for c in cells)
    chosen = [(c, p) for c, p in zip(cells, metrics_paths) if c[2] == first_seed and c[4] == last]
    pairs = list(dict.fromkeys((c[0], c[1]) for c, _ in chosen))
    arms = list(dict.fromkeys(c[3] for c, _ in chosen))
    fig, axes = plt.subplots(len(pairs), len(arms), figsize=(3.4 * len(arms), 3.6 * len(pairs) + 0.4),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for cell, path in chosen:
        ax = axes[pairs.index((cell[0], cell[1])), arms.index(cell[3])]
        ax.axis("on")
        m = read_json(path)
        scores, split = (m["test"], "test") if m.get("test") else (m, "val")
        cm = np.asarray(scores["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        ax.set(title=f"{cell[0]} / {cell[1]}\n{cell[3]}: {split} acc {scores['accuracy']:.3f}", xlabel="predicted",
               ylabel="true")
        ax.title.set_fontsize(8)
        ticks = np.arange(len(m["classes"]))
        ax.set_xticks(ticks, m["classes"], rotation=90, fontsize=6)
        ax.set_yticks(ticks, m["classes"], fontsize=6)
    fig.suptitle(f"seed {first_seed}, cycle {last} (the last), counts of images: rows the true class, columns "
                 "the predicted", fontsize=9)
    fig.tight_layout()
    _save(fig, out_png, stamp)


@timed_stage
def examples(images_path, cams_path, erased_npz, selected_csv, classes_path, out_png, n: int = 6,
             erased_table=None) -> None:
    """Original, CAM overlay and erased image for selected images of the most-confused class pairs:
    first the images whose added copy changed some pixel (``erased_table``, erased.csv's
    ``changed_fraction``; a black fill over black background changes none), then the rest."""
    from ..files.artifacts import cams_memmap, npz_array

    images = np.load(images_path, mmap_mode="r")
    classes = read_json(classes_path)["classes"]
    maps, rows, _ = cams_memmap(cams_path)  # memory-mapped: only the drawn maps and images are read
    with np.load(erased_npz, allow_pickle=False) as data:
        erased_rows = data["index"]
    erased = npz_array(erased_npz, "images")
    erased_at = {int(r): i for i, r in enumerate(erased_rows)}  # only images that joined training
    selected = pd.read_csv(selected_csv)
    fig, axes = plt.subplots(3, max(1, min(n, len(rows))), figsize=(2.4 * max(1, min(n, len(rows))), 7.6),
                             squeeze=False)
    if len(rows) == 0:
        axes[0, 0].text(0.5, 0.5, "no images selected in this cycle", ha="center", va="center")
        for ax in axes.ravel():
            ax.axis("off")
        _save(fig, out_png)
        return
    shown_first = set(erased_at)
    if erased_table is not None:  # changed pixels first, not "no pixel changed" panels
        table = pd.read_csv(erased_table, usecols=["index", "changed_fraction"])
        shown_first = set(table.loc[table.changed_fraction > 0, "index"].astype(int)) & shown_first
    for col, pos in enumerate(example_order(selected, shown_first)[:n]):
        row = selected.loc[pos]
        original = np.asarray(images[int(row["index"])])
        show = {"interpolation": "nearest", "cmap": "gray" if original.ndim == 2 else None}
        axes[0, col].imshow(original, **show)
        axes[0, col].set_title(f"{classes[int(row.label)]}\nas {classes[int(row.prediction)]}", fontsize=8)
        axes[1, col].imshow(original, **show)
        axes[1, col].imshow(np.asarray(maps[pos], dtype=np.float32), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear",
                            extent=(-0.5, original.shape[1] - 0.5, original.shape[0] - 0.5, -0.5))
        if int(row["index"]) in erased_at:
            added = np.asarray(erased[erased_at[int(row["index"])]])
            changed = added != original
            changed = changed.any(axis=-1) if changed.ndim == 3 else changed
            axes[2, col].imshow(added, **show)
            if changed.any():  # outline what was erased, so a black fill on a dark image shows
                axes[2, col].contour(changed, levels=[0.5], colors="red", linewidths=1.0)
            # pixels that differ: a black fill over black background changes none of them
            axes[2, col].set_title(f"{changed.mean():.0%} of pixels changed" if changed.any()
                                   else "no pixel changed", fontsize=8)
        else:
            axes[2, col].imshow(original, alpha=0.3, **show)
            axes[2, col].set_title("empty map:\nnot added", fontsize=8)
    for ax, label in zip(axes[:, 0], ["original", "CAM", "added (changed: red outline)"]):
        ax.set_ylabel(label)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, out_png)


def example_order(selected: pd.DataFrame, added: set) -> list:
    """Positions of ``selected`` to show: one image of each confusion (true, predicted) in turn,
    most frequent first, so the grid spreads over classes and confusions; images whose map
    erased something come before empty maps, keeping that spread."""
    if not len(selected):
        return []
    left_out = dict(zip(selected.index, ~selected["index"].isin(added)))  # True sorts after False
    groups = selected.groupby(["label", "prediction"]).groups  # (label, prediction) order, O(N) in all
    pairs = sorted(groups.items(), key=lambda kv: -len(kv[1]))  # most frequent first, stable
    queues = [sorted(members, key=left_out.__getitem__) for _, members in pairs]
    order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    return sorted(order, key=left_out.__getitem__)  # stable sort


FAITHFUL_STYLE = {"own": ("-", "its own maps"), "moved": ("--", "the same maps moved (random_erase's place)"),
                  "random_model": (":", "maps of the randomised model")}


def faithfulness(frame: pd.DataFrame, out_png, stamp: str = "") -> None:
    """Were the maps faithful? Per (dataset, model), one panel per proxy-kind arm and cycle: the
    true class's probability change as ROAD removes the most relevant pixels first (mean over the
    sampled images, then over seeds), for the arm's own maps, the same maps moved to random_erase's
    place, and the maps of the model with its head and last stage re-initialised."""
    columns = [c for c in frame.columns if c.startswith("road_morf_own_p")]
    cells = frame[frame.road_morf_own.notna()] if "road_morf_own" in frame and columns else frame.iloc[0:0]
    groups = list(cells.groupby(["dataset", "model", "arm", "cycle"], sort=False).groups)
    if not groups:
        fig, ax = plt.subplots(figsize=(6, 1.6))
        ax.text(0.5, 0.5, "no faithfulness measure in this run\n(it needs a proxy-kind arm; faithfulness.enabled)",
                ha="center", va="center")
        ax.axis("off")
        _save(fig, out_png, stamp)
        return
    percentiles = sorted(int(c.rsplit("_p", 1)[1]) for c in columns)
    removed = [100 - p for p in percentiles]
    per_row = min(4, len(groups))
    n_rows = -(-len(groups) // per_row)
    fig, axes = plt.subplots(n_rows, per_row, figsize=(3.9 * per_row, 3.3 * n_rows), squeeze=False)
    for ax, (dataset, model, arm, cycle) in zip(axes.ravel(), groups):
        g = cells[(cells.dataset == dataset) & (cells.model == model) & (cells.arm == arm) & (cells.cycle == cycle)]
        for kind, (style, label) in FAITHFUL_STYLE.items():
            ys = [g[f"road_morf_{kind}_p{p}"].mean() for p in percentiles]
            ax.plot(removed, ys, ls=style, marker="o", ms=3, color=colour(arm, list(frame.arm.unique())),
                    label=f"{label}: ROAD {g[f'road_combined_{kind}'].mean():+.3f}")
        n = int(g.n_faithfulness.max()) if "n_faithfulness" in g else 0
        layer = g.faithfulness_layer.iloc[0] if "faithfulness_layer" in g else "?"
        ax.set(xlabel="% of pixels removed, most relevant first", ylabel="change of p(target class)",
               title=f"{dataset} / {model}\n{arm}, cycle {int(cycle)} at {layer} ({n} images x {g.seed.nunique()} seeds)")
        ax.title.set_fontsize(8)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.legend(fontsize=6, loc="lower left")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, out_png, stamp)


@timed_stage
def figures(summary_csv, cells: list, metrics_paths: list, outputs: dict, comparisons: list | None = None,
            target_accuracy: float | None = None, stop_rule: bool = False,
            effect_of_interest: float = EFFECT_OF_INTEREST) -> None:
    from ..files.provenance import read_beside, summary_line

    frame = pd.read_csv(summary_csv, keep_default_na=False, na_values=[""])
    stamp = summary_line(read_beside(summary_csv))
    comparisons = COMPARISONS if comparisons is None else comparisons
    cost, cost_label = cost_of(frame)
    accuracy_by(frame, "cycle", outputs["accuracy_by_cycle"], "cycle", stamp)
    accuracy_by(frame, cost, outputs["accuracy_by_time"], cost_label, stamp)
    paired_differences(frame, comparisons, outputs["paired_differences"], stamp, stop_rule, effect_of_interest)
    accuracy_cost(frame, outputs["accuracy_cost"], stamp)
    peak_memory(frame, outputs["peak_memory"], stamp)
    time_to_target(frame, outputs["time_to_target"], target_accuracy, stamp)
    confusion_matrices(cells, metrics_paths, outputs["confusion_matrices"], stamp)
    per_image = {(c[0], c[1], int(c[2]), c[3], int(c[4])): Path(p).with_name("per_image.npz")
                 for c, p in zip(cells, metrics_paths) if Path(p).with_name("per_image.npz").exists()}
    attention_measures(frame, outputs["attention_measures"], stamp, per_image)
    faithfulness(frame, outputs["faithfulness"], stamp)
    if "effect_by_size" in outputs:
        effect_by_size(frame, comparisons, outputs["effect_by_size"], stamp, stop_rule, effect_of_interest)
        learning_curves(frame, outputs["learning_curves"], stamp)


def comparisons_in(frame: pd.DataFrame) -> list:
    """The comparisons a summary's arms call for (arms.comparisons), from its ``kind`` and
    ``matches`` columns; a summary without them names its arms by kind (the list form)."""
    from ..settings.arms import comparisons

    names = [a for a in frame.arm.unique() if a != "finetune"]
    if "kind" in frame:
        specs = frame[frame.arm != "finetune"].drop_duplicates("arm").set_index("arm")
        arms = {a: {"kind": specs.loc[a, "kind"], **({"matches": specs.loc[a, "matches"]}
                                                      if isinstance(specs.loc[a, "matches"], str)
                                                      and specs.loc[a, "matches"] else {})} for a in names}
    else:
        arms = {a: ({"kind": a, "matches": "proxy"} if a in ("duplicate", "random_erase") and "proxy" in names
                    else {"kind": a}) for a in names}
    return comparisons({"arms": arms})


def redraw(summary_csv, out_dir, target_accuracy: float | None = None,
           effect_of_interest: float | None = None, per_image_pack=None) -> list[Path]:
    """Every figure that reads only ``summary.csv`` and each dataset's verdict table, from a
    committed summary (docs/study/), without rerunning anything:
    ``python -m proxyattention.stages.figures docs/study/summary.csv OUT_DIR``. The comparisons come from
    the arms the summary holds; the stop rule, commit and config digest from ``provenance.json``
    beside it when there is one (copied to ``OUT_DIR`` with where it was redrawn from). With
    ``per_image_pack`` (files.study_files.pack's file, ``--per-image``): the verdicts' image-level
    bootstrap intervals and the reliability diagrams too."""
    from ..files.atomic import write_json
    from ..files.provenance import read_beside, summary_line

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(summary_csv, keep_default_na=False, na_values=[""])
    made = read_beside(summary_csv)
    stamp = summary_line(made)
    if made is not None:
        stop_rule = bool(made.get("stop_rule"))
    else:  # an older summary: a stop rule shows where it stopped a cycle
        stop_rule = bool("stop_reason" in frame and frame.stop_reason.dropna().astype(str).str.len().gt(0).any())
    run_config = (made or {}).get("config") or {}
    unmatched = []
    if isinstance(run_config.get("arms"), dict) and "proxy" in run_config:  # the run's own config: which
        from ..settings.arms import comparisons as config_comparisons  # controls add each arm's images
        from ..settings.arms import unmatched_pairs

        present = set(frame.arm)
        comparisons = [p for p in config_comparisons(run_config) if set(p) <= present]
        unmatched = [p for p in unmatched_pairs(run_config) if set(p) <= present]
    else:  # a summary alone: its kind and matches columns, and the run's recorded list
        comparisons = comparisons_in(frame)
        for pair in (made or {}).get("comparisons", []):
            if tuple(pair) not in comparisons and set(pair) <= set(frame.arm):
                comparisons.append(tuple(pair))
    if effect_of_interest is None:
        effect_of_interest = ((made or {}).get("config", {}).get("report", {})
                              .get("effect_of_interest", EFFECT_OF_INTEREST))
    cost, cost_label = cost_of(frame)
    per_image = None
    if per_image_pack is not None:
        import tempfile

        from ..files.study_files import unpack

        unpacked = tempfile.TemporaryDirectory(prefix="per_image_")
        per_image = unpack(per_image_pack, unpacked.name)
        last = frame[frame.cycle == frame.groupby(["dataset", "model"]).cycle.transform("max")]
        missing = sorted({(r.dataset, r.model, int(r.seed), r.arm, int(r.cycle)) for r in last.itertuples()}
                         - set(per_image))
        if missing:
            unpacked.cleanup()
            raise ValueError(f"{per_image_pack} holds no per-image results for {len(missing)} cell(s) of "
                             f"{summary_csv}, e.g. {missing[0]}: pack them from the same run as the summary")
    written = [out_dir / f"{name}.png" for name in ("accuracy_by_cycle", "accuracy_by_time", "paired_differences",
                                                    "accuracy_cost", "peak_memory", "time_to_target",
                                                    "attention_measures", "faithfulness")]
    accuracy_by(frame, "cycle", written[0], "cycle", stamp)
    accuracy_by(frame, cost, written[1], cost_label, stamp)
    paired_differences(frame, comparisons, written[2], stamp, stop_rule, effect_of_interest)
    accuracy_cost(frame, written[3], stamp)
    peak_memory(frame, written[4], stamp)
    time_to_target(frame, written[5], target_accuracy, stamp)
    attention_measures(frame, written[6], stamp, per_image)
    faithfulness(frame, written[7], stamp)
    if len(_sized(frame)):
        written += [out_dir / "effect_by_size.png", out_dir / "learning_curves.png"]
        effect_by_size(frame, comparisons, written[-2], stamp, stop_rule, effect_of_interest)
        learning_curves(frame, written[-1], stamp)
    for dataset in frame.dataset.unique():
        path = out_dir / f"{dataset}_verdicts.csv"  # a training size's: in a folder of its dataset
        path.parent.mkdir(parents=True, exist_ok=True)
        table = verdicts(frame, dataset, comparisons, stop_rule, effect_of_interest, per_image=per_image)
        write_csv(path, table)
        answer = out_dir / f"{dataset}_answer.md"
        proxy_arms = sorted(set(frame.loc[frame.kind == "proxy", "arm"])) if "kind" in frame else ["proxy"]
        with atomic_path(answer) as tmp:
            positive = sorted(set(frame.loc[frame.kind == "erasing", "arm"])) if "kind" in frame else []
            tmp.write_text(answers(table, proxy_arms, unmatched, positive))
        written += [path, answer]
    if per_image_pack is not None:
        unpacked.cleanup()
    if made is not None:
        write_json(out_dir / "provenance.json", {**made, "redrawn_from": str(summary_csv)})
        written.append(out_dir / "provenance.json")
    return written


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=redraw.__doc__.split("\n\n")[0])
    parser.add_argument("summary", help="a summary.csv the workflow wrote")
    parser.add_argument("out_dir")
    parser.add_argument("--target-accuracy", type=float, default=None)
    parser.add_argument("--effect-of-interest", type=float, default=None,
                        help="accuracy difference for the pairs_needed column (default: the run's, else 0.005)")
    parser.add_argument("--per-image", default=None,
                        help="the study's packed per-image results (python -m proxyattention.files.study_files): "
                             "the verdicts' image-level intervals and the reliability diagrams")
    args = parser.parse_args()
    for path in redraw(args.summary, args.out_dir, args.target_accuracy, args.effect_of_interest, args.per_image):
        print(path)
