"""Where an arm's accuracy curve is read and when it reaches a target: the columns a study's
figures and its page read (which accuracy, which cost), the finetune shared by every arm's curve,
and the time to target of research question 3 with its censored median. Used by stages/figures.py
and files/study_page.py; imports no stage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .verdicts import verdict_split


def with_shared_finetune(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy each cycle-0 row into every arm, so curves per arm start at the shared finetune.
    With no cycles after the finetune (``cycles: 0``), the finetune rows stay as they are."""
    arms = [a for a in frame.arm.unique() if a != "finetune"] or ["finetune"]
    zero = frame[frame.cycle == 0]
    copies = [zero.assign(arm=a) for a in arms]
    return pd.concat([frame[frame.cycle > 0], *copies], ignore_index=True)


def split_of(frame: pd.DataFrame, dataset: str) -> tuple[str, str]:
    """(column, axis label) of the accuracy a dataset's figures show: the split its verdicts use."""
    metric, split = verdict_split(frame[frame.dataset == dataset])
    name = split.split(" (")[0]
    if name in ("validation", "test"):  # a summary without the splits' origins
        return metric, ("test accuracy (held out)" if metric == "test_accuracy" else "validation accuracy")
    return metric, f"accuracy on\n{name}"


def curve_of(frame: pd.DataFrame, dataset: str) -> tuple[str, str]:
    """(column, axis label) of the accuracy on the epoch sample (``curve_accuracy``: the same images
    at every cycle, data/splits.py curve_sample) when the summary has it for every row of ``dataset``,
    else split_of's."""
    part = frame[frame.dataset == dataset]
    if "curve_accuracy" in part and len(part) and part.curve_accuracy.notna().all():
        _, label = split_of(frame, dataset)
        n = int(part.curve_images.max())
        return "curve_accuracy", f"{label.replace(chr(10), ' ')}\n(its epoch sample: {n} images)"
    return split_of(frame, dataset)


def sampled(frame: pd.DataFrame, dataset: str) -> bool:
    """Whether some cycle of ``dataset`` was evaluated on the epoch sample only
    (``evaluation.full_split: final``): its per-cycle curves then read the sample at every cycle."""
    part = frame[frame.dataset == dataset]
    return "verdict_sample" in part and bool(part.verdict_sample.notna().any())


def cost_of(frame: pd.DataFrame) -> tuple[str, str]:
    """(column, axis label) of an arm's cost: training plus its Proxy Attention stages where the
    summary has them (older summaries: training alone, and the label says so). An arm whose stage
    cost could not be known (its rows' ``cumulative_seconds`` blank: summary.csv's ``cost_note``
    says why) is named in the label and left out of the cost axis; the other arms keep theirs."""
    if "cumulative_seconds" in frame and frame.cumulative_seconds.notna().any():
        label = "cumulative seconds (training + find, CAM, mask)"
        unknown = sorted(set(frame.loc[frame.cumulative_seconds.isna(), "arm"]))
        if unknown:
            label += f"\ncost unknown, not drawn: {', '.join(unknown)} (summary.csv cost_note)"
        return "cumulative_seconds", label
    return "cumulative_train_seconds", "cumulative training seconds (stages not counted)"


def reach_target(frame: pd.DataFrame, target_accuracy: float | None = None) -> pd.DataFrame:
    """Per (dataset, model, arm, seed): the first cycle whose accuracy reaches the target, with the
    cumulative cost (cost_of) and images seen until then (NaN: not reached). The accuracy, and the
    target computed from it, are on the epoch sample of the verdicts' split (``curve_accuracy``,
    the same images at every cycle and the ones each epoch's curve point uses) when the summary
    has it, else on the whole verdicts' split.

    The target is ``target_accuracy`` (the stop rule's) when given, else per (dataset, model) the
    baseline arm's mean accuracy at its last cycle (what plain training gets to: the question is
    whether another arm gets there sooner), or, without a baseline arm, the highest mean every
    arm reached.
    """
    data = with_shared_finetune(frame)
    cost, _ = cost_of(frame)
    rows = []
    for (dataset, model), part in data.groupby(["dataset", "model"], sort=False):
        metric, _ = curve_of(frame, dataset)
        target = target_accuracy
        baselines = part[part.kind == "baseline"] if "kind" in part else part[part.arm == "baseline"]
        if target is None and len(baselines):
            target = baselines[baselines.cycle == baselines.cycle.max()][metric].mean()
        elif target is None:
            target = part.groupby(["arm", "cycle"])[metric].mean().groupby("arm").max().min()
        for (arm, seed), g in part.groupby(["arm", "seed"], sort=False):
            g = g.sort_values("cycle")
            hit = g[g[metric] >= target - 1e-12]
            first = hit.iloc[0] if len(hit) else None
            rows.append({"dataset": dataset, "model": model, "arm": arm, "seed": seed, "target": float(target),
                         "reached": first is not None,
                         "cycle": int(first.cycle) if first is not None else np.nan,
                         "metric": metric,
                         "seconds": float(first[cost]) if first is not None else np.nan,
                         "images_seen": float(first.cumulative_images_seen) if first is not None else np.nan})
    return pd.DataFrame(rows)


def censored_median(values: pd.Series, reached: pd.Series) -> float:
    """The median over every seed, a seed that never reached the target ranked last (inf): never
    the mean of the seeds that arrived. inf when half or more never arrived."""
    ranked = np.where(reached.to_numpy(), values.to_numpy(dtype=np.float64), np.inf)
    return float(np.median(ranked)) if len(ranked) else np.nan
