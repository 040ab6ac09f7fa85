"""Paired comparisons over seeds and their words: intervals, verdicts (Holm-adjusted), the
sentences of the answer, and the verdict table as HTML.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .power import mean_ci

DEFAULT_ARMS = ["baseline", "duplicate", "proxy", "random_erase"]
# The default arms' paired differences over seeds (arms.comparisons gives them for any config):
# every arm against baseline, and proxy against its controls (duplicate: the same images
# unchanged; random_erase: the same area at a random place).
COMPARISONS = [("duplicate", "baseline"), ("proxy", "baseline"), ("random_erase", "baseline"),
               ("proxy", "duplicate"), ("proxy", "random_erase")]


def paired_differences(frame: pd.DataFrame, arm: str, other: str, metric: str = "accuracy") -> pd.Series:
    """``arm - other`` of one (dataset, model) at its last cycle, per seed (the pairs share the
    seed's finetune and random streams), for the seeds where both ran."""
    final = frame[frame.cycle == frame.cycle.max()]
    by_arm = final.pivot_table(index="seed", columns="arm", values=metric)
    if arm not in by_arm or other not in by_arm:
        return pd.Series(dtype=np.float64)
    return (by_arm[arm] - by_arm[other]).dropna()


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
        for arm, other in (COMPARISONS if comparisons is None else comparisons):
            diff = paired_differences(per_model, arm, other, metric)
            if len(diff) or (arm in set(final.arm) and other in set(final.arm)):
                mean, lo, hi, n = mean_ci(diff)
                row.update({f"{arm}_minus_{other}_mean": mean, f"{arm}_minus_{other}_ci_low": lo,
                            f"{arm}_minus_{other}_ci_high": hi, f"{arm}_minus_{other}_pairs": n})
        rows.append(row)
    return pd.DataFrame(rows)


def origin(data: pd.DataFrame, column: str) -> str:
    """Where a held-out split of one dataset comes from, as ``prepare`` recorded it ("" when the
    summary predates the record)."""
    if column not in data or not len(data):
        return ""
    values = data[column].dropna().astype(str)
    values = values[values != ""]
    return values.iloc[0] if len(values) else ""


def verdict_split(data: pd.DataFrame, stop_rule: bool = False) -> tuple[str, str]:
    """(metric, split description) the verdicts of one dataset rest on. The description starts
    with where the split comes from (``val_origin`` / ``test_origin``, recorded by ``prepare``:
    e.g. "the official test split of FashionMNIST" for a validation split that is the dataset's
    test split), then what it was held out from; summaries without the record name the internal
    split (``test`` or ``validation``). The text up to " (" is the split's name."""
    if "test_accuracy" in data and data.test_accuracy.notna().all() and len(data):
        where = origin(data, "test_origin") or "test"
        return "test_accuracy", f"{where} (held out from training, selection and the stop rule)"
    where = origin(data, "val_origin")
    if stop_rule:
        return "accuracy", f"{where or 'validation'} (the stop rule also chose on it)"
    return "accuracy", f"{where} (held out from training and selection)" if where else "validation"


BETTER, WORSE, NO_EVIDENCE = "better", "worse", "no evidence at this n"
# Fewest seed pairs for a verdict: a t-interval from two pairs has one degree of freedom, and
# two equal differences (accuracy moves in steps of 1/n_val) give it zero width.
MIN_PAIRS = 3
# An interval narrower than this has no spread: accuracy moves in steps of 1/n, so three seeds
# can differ by exactly the same amount (up to float rounding), and a zero-width interval
# excludes zero without any evidence of a spread-adjusted effect.
MIN_WIDTH = 1e-9


def verdict(low: float, high: float, n: int) -> str:
    """The plain word for a paired difference: better or worse only when its 95% interval,
    from at least MIN_PAIRS seed pairs with a positive spread, excludes zero; otherwise no
    evidence at this n."""
    if n < MIN_PAIRS or not (np.isfinite(low) and np.isfinite(high)) or high - low <= MIN_WIDTH:
        return NO_EVIDENCE
    if np.isfinite(low) and low > 0:
        return BETTER
    if np.isfinite(high) and high < 0:
        return WORSE
    return NO_EVIDENCE


EFFECT_OF_INTEREST = 0.005  # report.effect_of_interest: the Cutout gain on CIFAR-100 (+0.50 points)


def verdicts(frame: pd.DataFrame, dataset: str, comparisons: list | None = None, stop_rule: bool = False,
             effect_of_interest: float = EFFECT_OF_INTEREST, per_image: dict | None = None) -> pd.DataFrame:
    """One row per (model, comparison) at the last cycle: mean paired difference over seeds,
    its 95% t-interval, the number of seed pairs, how many seeds went each way, the verdict, and
    what the comparison could have detected: the minimum detectable effect at 80% power (``mde``,
    from the differences' spread; NaN without one) and the seed pairs an effect of
    ``effect_of_interest`` would need. Each (dataset, model) table is one family for Holm's
    adjustment (``p_holm``, ``verdict_holm``). With ``per_image`` (a cell (dataset, model, seed,
    arm, cycle) -> its ``per_image.npz``): the two-level paired bootstrap interval over seeds
    and images (``boot_low``, ``boot_high``, ``boot_resamples``) and the share of evaluation
    images on which the two arms predict differently (``disagreement``, mean over seeds).

    On the held-out test split when the dataset has one (``test_accuracy``), else on the
    validation split; with a stop rule (``stop_rule``) the validation split also chose how many
    cycles each arm ran, so it is not held out from that choice: ``split`` says so.
    """
    from .power import holm, mde, paired_p_value, pairs_needed

    data = frame[frame.dataset == dataset]
    metric, split = verdict_split(data, stop_rule)
    measures = [metric] + [m for m in ATTENTION_METRICS if m in data and data[m].notna().any()]
    rows = []
    for model, per_model in data.groupby("model", sort=False):
        for measured in measures:  # one Holm family per (dataset, model, metric)
            family = []
            primary = measured == metric
            for arm, other in (COMPARISONS if comparisons is None else comparisons):
                diff = paired_differences(per_model, arm, other, measured)
                if not len(diff) and not {arm, other} <= set(per_model.arm):
                    continue
                mean, lo, hi, n = mean_ci(diff)
                sd = float(diff.std(ddof=1)) if n >= 2 else np.nan
                family.append({"dataset": dataset, "model": model, "comparison": f"{arm} - {other}", "arm": arm,
                               "control": other, "cycle": int(data.cycle.max()), "metric": measured, "split": split,
                               "mean_difference": mean, "ci_low": lo, "ci_high": hi, "n_pairs": n,
                               "seeds_higher": int((diff > 0).sum()), "seeds_lower": int((diff < 0).sum()),
                               "verdict": oriented(verdict(lo, hi, n), measured), "sd_difference": sd,
                               "mde": mde(sd, n), "effect_of_interest": effect_of_interest if primary else np.nan,
                               "pairs_needed": pairs_needed(effect_of_interest, sd) if primary else np.nan,
                               "p_value": paired_p_value(diff),
                               **(image_level(per_image, dataset, model, arm, other, int(data.cycle.max()),
                                              diff.index, "test" if metric.startswith("test_") else "val")
                                  if primary else image_level(None, *[None] * 7))})
            for row, adjusted in zip(family, holm([r["p_value"] for r in family])):
                row["p_holm"] = adjusted
                row["verdict_holm"] = oriented(holm_verdict(adjusted, row["mean_difference"], row["n_pairs"]),
                                               measured)
            rows += family
    table = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    extra = faithfulness_verdicts(frame, dataset)
    return pd.concat([table, extra], ignore_index=True) if len(extra) else table


def _points(v: float, signed: bool = True) -> str:
    return "undefined" if not np.isfinite(v) else (f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}")


def unmatched_sentence(unmatched: list) -> str:
    """The proxy arm / control pairs the tables do not judge (settings/arms.py unmatched_pairs)."""
    if not unmatched:
        return ""
    pairs = ", ".join(f"{arm} minus {control}" for arm, control in unmatched)
    return (f"Not judged: {pairs}. Each control there adds other images than the arm (another selection, CAM or "
            "threshold), so their difference mixes what is added with how it is painted; give the arm a control "
            "of its own (matches: the arm's name) to compare them.\n")


def answers(table: pd.DataFrame, proxy_arms: list, unmatched: list | None = None, positive=()) -> str:
    """The answer of a verdict table in plain sentences, one paragraph per (dataset, model): for
    each comparison of a Proxy Attention arm (and of a ``positive`` control, an ``erasing`` arm,
    named as such), the Holm-adjusted verdict, the mean difference and its interval, the MDE and
    the seed pairs the effect of interest would need. Written from the numbers; plain text that
    reads the same as Markdown and reStructuredText."""
    paragraphs = []
    faithful = table[table.metric == "road_combined"]
    table = table[~table.metric.isin([*ATTENTION_METRICS, "road_combined"])]
    for (dataset, model), part in table.groupby(["dataset", "model"], sort=False):
        sentences = []
        for r in part[part.arm.isin([*proxy_arms, *positive])].itertuples():
            named = f"{r.arm} minus {r.control}" + (" (the positive control: can erasing move accuracy here?)"
                                                    if r.arm in positive else "")
            needed = ("undefined (no spread)" if np.isnan(r.pairs_needed) else
                      "more than 100,000" if np.isinf(r.pairs_needed) else f"{int(r.pairs_needed)}")
            pairs = f"{r.n_pairs} seed pair{'' if r.n_pairs == 1 else 's'}"
            if r.n_pairs < MIN_PAIRS or not (np.isfinite(r.ci_low) and np.isfinite(r.ci_high)):
                sentences.append(
                    f"{named}: {_points(r.mean_difference)} points over {pairs}; no interval, "
                    f"detectable effect or verdict (they need at least {MIN_PAIRS} seed pairs), and "
                    f"{_points(r.effect_of_interest, False)} points would need {needed} seed pairs.")
                continue
            detect = (f"this run could detect {_points(r.mde, False)} points with 80% power"
                      if np.isfinite(r.mde) and r.mde < 1 else
                      "its detectable effect exceeds 100 points (no difference in accuracy could be detected with "
                      "80% power)" if np.isfinite(r.mde) else
                      "its detectable effect is undefined (the paired differences have no spread)")
            sentences.append(
                f"{named}: {r.verdict_holm} (Holm-adjusted over the {len(part)} comparisons of "
                f"this table), {_points(r.mean_difference)} points, 95% interval {_points(r.ci_low)} to "
                f"{_points(r.ci_high)}, {pairs}; {detect}, and "
                f"{_points(r.effect_of_interest, False)} points would need {needed} seed pairs.")
        sentences += faithfulness_sentences(faithful[(faithful.dataset == dataset) & (faithful.model == model)])
        if sentences:
            split = part.split.iloc[0].split(" (")[0]
            measured = f"{split} accuracy" if split in ("validation", "test") else f"accuracy on {split}"
            paragraphs.append(f"{dataset} / {model}, does Proxy Attention help (cycle {int(part.cycle.iloc[0])}, "
                              f"{measured})? " + " ".join(sentences))
    text = "\n\n".join(paragraphs) + "\n" if paragraphs else "No Proxy Attention arm was compared.\n"
    return text + ("\n" + unmatched_sentence(unmatched) if unmatched else "")


def image_level(per_image: dict | None, dataset, model, arm, other, cycle: int, seeds, split: str) -> dict:
    """The bootstrap interval and disagreement of one comparison from its per-image files (NaN
    without them: a summary redrawn on its own)."""
    from .bootstrap import RESAMPLES, disagreement, outcome_shares, paired_bootstrap

    empty = {"boot_low": np.nan, "boot_high": np.nan, "boot_resamples": 0, "disagreement": np.nan}
    if not per_image:
        return empty
    shares, disagree, n_images = [], [], None
    for seed in seeds:
        files = [per_image.get((dataset, model, int(seed), name, cycle)) for name in (arm, other)]
        if any(f is None or not Path(f).exists() for f in files):
            return empty
        with np.load(files[0]) as a, np.load(files[1]) as b:
            if not np.array_equal(a[f"{split}_index"], b[f"{split}_index"]):
                raise ValueError(f"{files[0]} and {files[1]} hold other {split} images; the arms must be "
                                 "evaluated on the same images")
            right_a = a[f"{split}_prediction"] == a[f"{split}_label"]
            right_b = b[f"{split}_prediction"] == b[f"{split}_label"]
            shares.append(outcome_shares(right_a, right_b))
            disagree.append(disagreement(a[f"{split}_prediction"], b[f"{split}_prediction"]))
            n_images = len(right_a)
    # like the t-interval's verdict, from MIN_PAIRS seed pairs on: resampling two seeds gives an
    # interval far narrower than the seeds' spread allows
    low, high = paired_bootstrap(np.array(shares), n_images or 0) if len(shares) >= MIN_PAIRS else (np.nan, np.nan)
    return {"boot_low": low, "boot_high": high, "boot_resamples": RESAMPLES if np.isfinite(low) else 0,
            "disagreement": float(np.mean(disagree)) if disagree else np.nan}


# Question 2's measures (attention_measures.py), with the verdicts of accuracy; +1: higher is
# better, -1: lower is better, 0: neither (the words then say higher or lower).
ATTENTION_METRICS = {"occlusion_auc": 1, "ece": -1, "brier": -1, "map_top10_mass": 0, "map_entropy": 0,
                     "map_in_object": 1, "pointing_game": 1}
HIGHER, LOWER = "higher", "lower"


def oriented(word: str, metric: str) -> str:
    """The verdict word for ``metric``'s direction: better/worse flip where lower is better, and
    become higher/lower where neither direction is better."""
    direction = ATTENTION_METRICS.get(metric, 1)
    if word == NO_EVIDENCE or direction == 1:
        return word
    if direction == -1:
        return WORSE if word == BETTER else BETTER
    return HIGHER if word == BETTER else LOWER


def holm_verdict(p_holm: float, mean: float, n: int) -> str:
    """The verdict word from a Holm-adjusted p-value (the same rule as ``verdict`` otherwise)."""
    if n < MIN_PAIRS or not np.isfinite(p_holm) or p_holm >= 0.05:
        return NO_EVIDENCE
    return BETTER if mean > 0 else WORSE


def verdicts_html(table: pd.DataFrame, dataset: str, stamp: str = "") -> str:
    """The verdict table as a page of its own, for the report (which previews HTML, not CSV);
    ``stamp`` says what made it (provenance.summary_line)."""
    import html

    shown = table.drop(columns=["dataset", "arm", "control", "sd_difference"])
    for column in ("mean_difference", "ci_low", "ci_high"):
        shown[column] = shown[column].map(lambda v: "" if not np.isfinite(v) else f"{v:+.4f}")
    for column in ("boot_low", "boot_high", "disagreement"):
        shown[column] = shown[column].map(lambda v: "" if not np.isfinite(v) else f"{v:+.4f}")
    for column in ("p_value", "p_holm", "mde", "effect_of_interest"):
        shown[column] = shown[column].map(lambda v: "undefined" if not np.isfinite(v) else f"{v:.4f}")
    shown["pairs_needed"] = shown["pairs_needed"].map(
        lambda v: "undefined" if np.isnan(v) else ("more than 100000" if np.isinf(v) else f"{int(v)}"))
    colours = {BETTER: "#d9f2d9", WORSE: "#f8d7da", NO_EVIDENCE: "#ffffff", HIGHER: "#e8eefc", LOWER: "#e8eefc"}
    rows = "".join(
        "<tr style='background:{}'>{}</tr>".format(
            colours[r["verdict_holm"]], "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()))
        for r in shown.to_dict("records"))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(dataset)} verdicts"
            "</title><style>body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>"
            f"<h3>{html.escape(dataset)}: each arm minus its control at the last cycle, paired by seed</h3>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            f"<p><em>better</em> / <em>worse</em>: the 95% interval from at least {MIN_PAIRS} seed pairs excludes "
            "zero. <em>no evidence at this n</em>: it does not, or there are fewer pairs, or every pair differs by "
            "the same amount (no spread, so no interval); it does not mean the arms are equal. <em>verdict</em> is "
            "each comparison on its own; <em>verdict_holm</em> (the row colour) adjusts for the table's "
            "comparisons together (Holm, one family per dataset and model).</p>"
            "<p><em>mde</em>: the smallest true difference this many seed pairs, with this spread, would detect "
            "80% of the time (two-sided 5% paired t-test); undefined without a spread. <em>pairs_needed</em>: "
            "the seed pairs an effect of <em>effect_of_interest</em> would need for the same. <em>boot_low</em>, "
            "<em>boot_high</em>: a 95% interval from a paired bootstrap over seeds and evaluation images together "
            "(<em>boot_resamples</em> resamples, seeded); <em>disagreement</em>: the share of evaluation images "
            "the two arms predict differently.</p>"
            + (f"<p><small>{html.escape(stamp)}</small></p>" if stamp else "") + "</body></html>")


VERDICT_COLUMNS = ["dataset", "model", "comparison", "arm", "control", "cycle", "metric", "split", "mean_difference",
                   "ci_low", "ci_high", "n_pairs", "seeds_higher", "seeds_lower", "verdict", "verdict_holm", "p_value",
                   "p_holm", "sd_difference", "mde", "effect_of_interest", "pairs_needed", "boot_low", "boot_high",
                   "boot_resamples", "disagreement"]


# Within an arm, paired by seed: its own maps against the moved maps (is the place more important
# than a random one of the same shape?) and against the randomised model's maps.
FAITHFULNESS_CONTRASTS = (("road_combined_own", "road_combined_moved", "moved maps"),
                          ("road_combined_own", "road_combined_random_model", "randomised model's maps"))


def faithfulness_verdicts(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Verdict rows (the verdict table's columns) of each proxy-kind arm's maps, per model and
    cycle: ROAD combined of its own maps minus that of the moved maps, and minus that of the
    randomised model's maps, paired by seed; one Holm family per (dataset, model, contrast)."""
    from .power import holm, mde, mean_ci, paired_p_value

    data = frame[frame.dataset == dataset]
    if "road_combined_own" not in data:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    data = data[data.road_combined_own.notna()]
    rows = []
    for model, per_model in data.groupby("model", sort=False):
        for own, other, what in FAITHFULNESS_CONTRASTS:
            family = []
            for (arm, cycle), part in per_model.groupby(["arm", "cycle"], sort=False):
                diff = (part.set_index("seed")[own] - part.set_index("seed")[other]).dropna()
                mean, lo, hi, n = mean_ci(diff)
                sd = float(diff.std(ddof=1)) if n >= 2 else np.nan
                family.append({"dataset": dataset, "model": model, "comparison": f"{arm} maps - {what}",
                               "arm": arm, "control": f"{arm} ({what})", "cycle": int(cycle),
                               "metric": "road_combined",
                               "split": f"training images its maps explain (up to {int(part.n_faithfulness.max())} per seed)",
                               "mean_difference": mean, "ci_low": lo, "ci_high": hi, "n_pairs": n,
                               "seeds_higher": int((diff > 0).sum()), "seeds_lower": int((diff < 0).sum()),
                               "verdict": verdict(lo, hi, n), "sd_difference": sd, "mde": mde(sd, n),
                               "effect_of_interest": np.nan, "pairs_needed": np.nan,
                               "p_value": paired_p_value(diff), "boot_low": np.nan, "boot_high": np.nan,
                               "boot_resamples": 0, "disagreement": np.nan})
            for row, adjusted in zip(family, holm([r["p_value"] for r in family])):
                row["p_holm"] = adjusted
                row["verdict_holm"] = holm_verdict(adjusted, row["mean_difference"], row["n_pairs"])
            rows += family
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def faithfulness_sentences(table: pd.DataFrame) -> list[str]:
    """The answer's sentence per (model, arm, cycle): were this run's maps more faithful than the
    same shape at a random place, at this layer?"""
    out = []
    if not len(table) or "comparison" not in table:
        return out
    moved = table[(table.metric == "road_combined") & table.comparison.str.endswith("- moved maps")]
    for r in moved.itertuples():
        bounds = (f"95% interval {r.ci_low:+.4f} to {r.ci_high:+.4f}" if np.isfinite(r.ci_low)
                  else "no interval from fewer than 2 seed pairs")
        interval = f"{r.mean_difference:+.4f}, {bounds}, {r.n_pairs} seed pair{'s' if r.n_pairs != 1 else ''}"
        if r.verdict_holm == "better":
            word = "more faithful than the same shape at a random place"
        elif r.verdict_holm == "worse":
            word = "less faithful than the same shape at a random place"
        else:
            word = "not shown to be more faithful than the same shape at a random place"
        out.append(f"Were {r.arm}'s maps faithful (cycle {r.cycle})? {word} (ROAD combined, own minus moved "
                   f"maps: {interval}; Holm over this model's {r.arm} cycles).")
    return out
