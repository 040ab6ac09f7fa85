"""Stage ``aggregate``: one summary table for the grid, and comparison tables per dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, read_json, write_csv, write_json
from .timing import last_stage_seconds, timed_stage

log = logging.getLogger(__name__)

ATTENTION_COLUMNS = ["occlusion_0", "occlusion_20", "occlusion_40", "occlusion_60", "occlusion_80", "occlusion_auc",
                     "n_occlusion", "ece", "brier", "n_calibration", "map_top10_mass", "map_entropy", "n_maps",
                     "map_in_object", "object_share", "pointing_game", "n_localised"]
METRICS = ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "top5_accuracy", "val_loss"]
TEST_METRICS = ["accuracy", "balanced_accuracy", "f1_macro", "loss"]
KEYS = ["dataset", "model", "arm", "seed", "cycle"]  # column order of the summary
CELL = ["dataset", "model", "seed", "arm", "cycle"]  # order of a grid cell (layout.grid)


def summarise(cells: list, metrics_paths: list, erased_tables: dict | None = None,
              dataset_infos: dict | None = None, arms: list | None = None,
              stage_logs: dict | None = None, arm_specs: dict | None = None) -> pd.DataFrame:
    """One row per (dataset, model, arm, seed, cycle) with every metric, time and memory.

    ``cells`` and ``metrics_paths`` are parallel. Cumulative time and images add
    the shared finetune (cycle 0) to each arm's cycles. ``erased_tables`` maps a
    cell to its ``erased.csv`` for the arms that erase; ``dataset_infos`` a dataset
    to its prepared ``classes.json`` (for the count of skipped bad images);
    ``stage_logs`` a cell of an adding arm to {stage: the log of the job it used}
    (find_misclassified, compute_cams, mask_and_save): their own time is the arm's
    ``proxy_seconds``, counted in full by every arm that used a shared job, since each would
    pay it alone. ``cumulative_seconds`` is training plus those stages;
    ``cumulative_train_seconds`` training alone. ``arm_specs`` (the config's ``arms`` mapping)
    gives each row its arm's ``kind`` and ``matches``, so the summary alone says what to compare.
    """
    skipped = {d: read_json(p)["n_skipped"] for d, p in (dataset_infos or {}).items()}
    rows = []
    for cell, path in zip(cells, metrics_paths):
        m = read_json(path)
        row = dict(zip(CELL, cell))
        spec = (arm_specs or {}).get(row["arm"], {"kind": "finetune" if row["arm"] == "finetune" else row["arm"]})
        row["kind"], row["matches"] = spec["kind"], spec.get("matches") or ""
        row.update({k: m.get(k, np.nan) for k in METRICS})
        test = m.get("test", {})  # the held-out test split, when the dataset has one
        row.update({f"test_{k}": test.get(k, np.nan) for k in TEST_METRICS})
        row["n_test"] = test.get("n_test", 0)
        measured = m.get("attention", {})  # Question 2's measures, on the verdicts' split
        row.update({k: measured.get(k, np.nan) for k in ATTENTION_COLUMNS})
        row.update({k: m.get(k) for k in ("train_seconds", "wall_seconds", "epochs", "images_seen", "n_train_extra",
                                          "peak_memory_mib", "peak_memory_kind", "device", "precision", "ran",
                                          "stop_reason", "n_val", "pretrained")})
        row["run_dir_mib"] = _folder_mib(Path(path).parent)
        row["n_skipped_images"] = skipped.get(row["dataset"], 0)
        row.update(added_counts((erased_tables or {}).get(tuple(cell))))
        row["proxy_seconds"] = proxy_seconds((stage_logs or {}).get(tuple(cell), {}))
        rows.append(row)
    frame = pd.DataFrame(rows)[KEYS + [k for k in rows[0] if k not in KEYS]]
    finetune = frame[frame.cycle == 0].set_index(["dataset", "model", "seed"])
    cum_seconds, cum_all, cum_images = [], [], []
    for _, r in frame.iterrows():
        base = finetune.loc[(r.dataset, r.model, r.seed)]
        same = frame[(frame.dataset == r.dataset) & (frame.model == r.model) & (frame.seed == r.seed)
                     & (frame.arm == r.arm) & (frame.cycle > 0) & (frame.cycle <= r.cycle)]
        cum_seconds.append(base.train_seconds + (same.train_seconds.sum() if r.cycle > 0 else 0.0))
        cum_all.append(cum_seconds[-1] + (same.proxy_seconds.sum(skipna=False) if r.cycle > 0 else 0.0))
        cum_images.append(base.images_seen + (same.images_seen.sum() if r.cycle > 0 else 0))
    frame["cumulative_train_seconds"] = cum_seconds
    frame["cumulative_seconds"] = cum_all
    frame["cumulative_images_seen"] = cum_images
    order = ["finetune", *(arms or DEFAULT_ARMS)]
    order += sorted(set(frame.arm) - set(order))
    return frame.sort_values(KEYS, key=lambda s: s.map(order.index) if s.name == "arm" else s).reset_index(drop=True)


def proxy_seconds(logs: dict) -> float:
    """The Proxy Attention stages' own time for one cell, from {stage: log}; NaN (with a warning
    naming the log) when a log is missing or unfinished, rather than a number that leaves it out."""
    total = 0.0
    for stage, path in logs.items():
        try:
            total += last_stage_seconds(path, stage)
        except (OSError, ValueError) as err:
            log.warning("cost of %s unknown: %s", stage, err)
            return np.nan
    return total


def added_counts(table) -> dict:
    """What a cycle added to training, from its ``erased.csv`` (None: an arm that adds nothing).

    n_selected: images the selection rule chose; n_empty_maps: of those, maps whose mask held no
    pixel (constant, or a top plateau over the threshold: nothing to erase); n_added: images that
    joined training; n_erased: added with at least one pixel whose value changed; n_added_unchanged:
    added with none changed (the duplicate arm's, proxy.empty_maps: keep, or a fill that equals
    what it covers, e.g. black on black); erased_fraction_mean: the mask's share of the image, over
    the added images with a mask; changed_fraction_mean: the share of pixels changed, over every
    added image.
    """
    if table is None:
        return {"n_selected": 0, "n_empty_maps": 0, "empty_map_fraction": np.nan, "n_added": 0, "n_erased": 0,
                "n_added_unchanged": 0, "erased_fraction_mean": np.nan, "changed_fraction_mean": np.nan}
    erased = pd.read_csv(table, keep_default_na=False)
    added = erased[erased["added"].astype(bool)]
    changed = added["changed_fraction"] > 0
    masked = added["erased_fraction"] > 0
    n = len(erased)
    return {
        "n_selected": n,
        "n_empty_maps": int(erased["empty_map"].astype(bool).sum()),
        "empty_map_fraction": float(erased["empty_map"].astype(bool).mean()) if n else np.nan,
        "n_added": len(added),
        "n_erased": int(changed.sum()),
        "n_added_unchanged": int((~changed).sum()),
        "erased_fraction_mean": float(added.loc[masked, "erased_fraction"].mean()) if masked.any() else np.nan,
        "changed_fraction_mean": float(added["changed_fraction"].mean()) if len(added) else np.nan,
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


def verdict_split(data: pd.DataFrame, stop_rule: bool = False) -> tuple[str, str]:
    """(metric, split description) the verdicts of one dataset rest on."""
    if "test_accuracy" in data and data.test_accuracy.notna().all() and len(data):
        return "test_accuracy", "test (held out from training, selection and the stop rule)"
    return "accuracy", "validation (the stop rule also chose on it)" if stop_rule else "validation"


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
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def _points(v: float, signed: bool = True) -> str:
    return "undefined" if not np.isfinite(v) else (f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}")


def answers(table: pd.DataFrame, proxy_arms: list) -> str:
    """The answer of a verdict table in plain sentences, one paragraph per (dataset, model): for
    each comparison of a Proxy Attention arm, the Holm-adjusted verdict, the mean difference and
    its interval, the MDE and the seed pairs the effect of interest would need. Written from
    the numbers; plain text that reads the same as Markdown and reStructuredText."""
    paragraphs = []
    table = table[~table.metric.isin(list(ATTENTION_METRICS))]
    for (dataset, model), part in table.groupby(["dataset", "model"], sort=False):
        sentences = []
        for r in part[part.arm.isin(proxy_arms)].itertuples():
            needed = ("undefined (no spread)" if np.isnan(r.pairs_needed) else
                      "more than 100,000" if np.isinf(r.pairs_needed) else f"{int(r.pairs_needed)}")
            sentences.append(
                f"{r.arm} minus {r.control}: {r.verdict_holm} (Holm-adjusted over the {len(part)} comparisons of "
                f"this table), {_points(r.mean_difference)} points, 95% interval {_points(r.ci_low)} to "
                f"{_points(r.ci_high)}, {r.n_pairs} seed pairs; this run could detect {_points(r.mde, False)} "
                f"points with 80% power, and {_points(r.effect_of_interest, False)} points would need {needed} "
                "seed pairs.")
        if sentences:
            split = part.split.iloc[0].split(" (")[0]
            paragraphs.append(f"{dataset} / {model}, does Proxy Attention help (cycle {int(part.cycle.iloc[0])}, "
                              f"{split} accuracy)? " + " ".join(sentences))
    return "\n\n".join(paragraphs) + "\n" if paragraphs else "No Proxy Attention arm was compared.\n"


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


@timed_stage
def aggregate(cells: list, metrics_paths: list, erased_tables: dict, out_summary, out_tables: dict,
              dataset_infos: dict | None = None, arms: list | None = None, comparisons: list | None = None,
              out_verdicts: dict | None = None, stop_rule: bool = False, stage_logs: dict | None = None,
              config: dict | None = None, effect_of_interest: float = EFFECT_OF_INTEREST,
              per_image_paths: list | None = None) -> None:
    """Write ``summary.csv``, ``provenance.json`` and ``provenance.html`` beside it (``config``:
    the validated config), and per dataset a comparison table (``out_tables``: dataset -> path)
    and a verdict table (``out_verdicts``: dataset -> path)."""
    from . import provenance

    arm_specs = (config or {}).get("arms") if isinstance((config or {}).get("arms"), dict) else None
    frame = summarise(cells, metrics_paths, erased_tables, dataset_infos, arms, stage_logs, arm_specs)
    comparisons = COMPARISONS if comparisons is None else comparisons
    made = provenance.gather(config or {}, [read_json(p).get("versions") for p in metrics_paths], comparisons,
                             stop_rule)
    if len(made["job_commits"]) > 1:
        log.warning("the jobs of this run ran from %d commits: %s", len(made["job_commits"]),
                    ", ".join(made["job_commits"]))
    write_json(Path(out_summary).with_name("provenance.json"), made)
    with atomic_path(Path(out_summary).with_name("provenance.html")) as tmp:
        tmp.write_text(provenance.as_html(made))
    for r in frame[frame.empty_map_fraction > 0.5].itertuples():
        log.warning("%s/%s seed %s %s cycle %s: %d of %d maps were empty (nothing to erase)", r.dataset, r.model,
                    r.seed, r.arm, r.cycle, r.n_empty_maps, r.n_selected)
    write_csv(out_summary, frame)
    for dataset, path in out_tables.items():  # on the split the verdicts use (test when there is one)
        metric, _ = verdict_split(frame[frame.dataset == dataset], stop_rule)
        write_csv(path, comparison(frame, dataset, metric, comparisons=comparisons))
    for dataset, path in (out_verdicts or {}).items():
        images = {(c[0], c[1], int(c[2]), c[3], int(c[4])): p for c, p in zip(cells, per_image_paths or [])}
        table = verdicts(frame, dataset, comparisons, stop_rule=stop_rule, effect_of_interest=effect_of_interest,
                         per_image=images)
        write_csv(path, table)
        proxy_arms = sorted(set(frame.loc[frame.kind == "proxy", "arm"]))
        with atomic_path(Path(path).with_name(f"{dataset}_answer.md")) as tmp:
            tmp.write_text(answers(table, proxy_arms))
        with atomic_path(Path(path).with_suffix(".html")) as tmp:
            tmp.write_text(verdicts_html(table, dataset, provenance.summary_line(made)))
        for r in table.itertuples():
            log.info("%s/%s %s: %+.4f [%+.4f, %+.4f] over %d seed pair(s): %s", dataset, r.model, r.comparison,
                     r.mean_difference, r.ci_low, r.ci_high, r.n_pairs, r.verdict)
