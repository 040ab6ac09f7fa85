"""A sized study's tables for its page (docs/study.md), drawn from its committed files alone: the
summary and the verdict tables the documented redraw writes from it (and the packed per-image
results). Each table is printed under a heading comment naming it, in the order the page shows
them, for the page to hold each one as printed.

    python -m proxyattention.files.study_page docs/study3
    python -m proxyattention.files.study_page docs/study3 --beside docs/study3-mixed   # and another run's verdicts

Numbers are percentage points for accuracy and the question-2 measures (ECE, Brier x 100,
occlusion AUC x 100), the ROAD score's own units for faithfulness, seconds for cost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.reach import censored_median, reach_target
from ..settings.sizes import size_of

MINUS = "\u2212"
PRIMARY = "proxy - random_erase"
MEASURES = ("ece", "brier", "occlusion_auc")


def _signed(x: float, scale: float = 100.0, digits: int = 2) -> str:
    return "" if not np.isfinite(x) else f"{scale * x:+.{digits}f}".replace("-", MINUS)


def _plain(x: float, scale: float = 100.0, digits: int = 2) -> str:
    return "" if not np.isfinite(x) else f"{scale * x:.{digits}f}".replace("-", MINUS)


def _interval(low: float, high: float, scale: float = 100.0, digits: int = 2) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return ""
    return f"[{_signed(low, scale, digits)}, {_signed(high, scale, digits)}]"


def _words(comparison: str) -> str:
    return comparison.replace(" - ", f" {MINUS} ")


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _sizes(summary: pd.DataFrame) -> list:
    """The summary's datasets in the order of their training size (smallest first)."""
    datasets = list(dict.fromkeys(summary.dataset))
    return sorted(datasets, key=lambda d: summary.loc[summary.dataset == d, "train_per_class"].iloc[0])


def _verdicts(study: Path, dataset: str) -> pd.DataFrame:
    base, size = dataset.split("/", 1) if "/" in dataset else (dataset, "")
    path = study / "tables" / base / f"{size}_verdicts.csv" if size else study / "tables" / f"{base}_verdicts.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no verdict table for {dataset} (redraw it: python -m "
                                f"proxyattention.stages.figures {study}/summary.csv {study}/tables ...)")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def accuracy(summary: pd.DataFrame) -> str:
    """Each arm's mean accuracy per cycle, its added images and changed pixels, per size."""
    cycles = sorted(summary.cycle.unique())
    rows = []
    for dataset in _sizes(summary):
        part = summary[summary.dataset == dataset]
        shared = part[part.cycle == 0].accuracy.mean()
        for arm in [a for a in dict.fromkeys(part.arm) if a != "finetune"]:
            mine = part[part.arm == arm]
            means = [shared] + [mine[mine.cycle == c].accuracy.mean() for c in cycles if c > 0]
            added = mine[mine.cycle > 0].groupby("cycle").n_added.mean() if "n_added" in mine else pd.Series()
            changed = mine[mine.cycle > 0].changed_fraction_mean.mean() if "changed_fraction_mean" in mine else np.nan
            rows.append([size_of(dataset), arm, *[_plain(m) for m in means],
                         ", ".join(f"{v:.0f}" for v in added) if added.sum() > 0 else "0",
                         _plain(changed, digits=1) + "%" if np.isfinite(changed) and changed > 0 else ""])
    seeds = summary.seed.nunique()
    images = []
    for c in cycles:
        sample = summary[summary.cycle == c].verdict_sample
        n = sample.iloc[0] if sample.notna().all() else summary[summary.cycle == c].n_val.iloc[0]
        images.append(f"cycle {c}{' (shared)' if c == 0 else ''}, {int(n):,} images")
    header = ["size", "arm", *images,
              "images added per cycle", "pixels changed per added image"]
    return f"Mean accuracy (%) over {seeds} seeds\n\n" + _table(header, rows)


def verdicts(study: Path, summary: pd.DataFrame, dataset: str) -> str:
    """The size's accuracy comparisons at the last cycle: interval, Holm word, MDE."""
    table = _verdicts(study, dataset)
    mine = table[(table.metric == "accuracy")]
    mine = mine[mine.cycle == mine.cycle.max()]
    rows = []
    for r in mine.itertuples():
        bold = (lambda text: f"**{text}**" if text else "") if r.comparison == PRIMARY else (lambda text: text)
        rows.append([bold(_words(r.comparison)), bold(_signed(r.mean_difference)),
                     bold(_interval(r.ci_low, r.ci_high)), _interval(r.boot_low, r.boot_high),
                     f"{r.seeds_higher} / {r.seeds_lower} of {r.n_pairs}", r.verdict_holm,
                     _plain(r.mde), "" if not np.isfinite(r.pairs_needed) else f"{r.pairs_needed:.0f}"])
    header = ["comparison", "mean difference (points)", "95% t interval", "95% bootstrap interval (seeds and images)",
              "seeds higher / lower", f"verdict (Holm over {len(mine)})", "MDE, 80% power (points)",
              "seed pairs for 0.5 points"]
    return f"{size_of(dataset)}: accuracy after cycle {int(mine.cycle.max())}\n\n" + _table(header, rows)


def measures(study: Path, summary: pd.DataFrame) -> str:
    """Question 2's measures at the last cycle: each comparison's difference with its interval,
    per size; a star where Holm's adjustment over the comparisons of that measure finds one."""
    rows = []
    for dataset in _sizes(summary):
        table = _verdicts(study, dataset)
        last = table[table.metric == "accuracy"].cycle.max()
        table = table[(table.cycle == last) & table.metric.isin(MEASURES)]
        for comparison in dict.fromkeys(table.comparison):
            cells = []
            for metric in MEASURES:
                r = table[(table.comparison == comparison) & (table.metric == metric)]
                if not len(r):
                    cells.append("")
                    continue
                r = r.iloc[0]
                star = "*" if r.verdict_holm != "no evidence at this n" else ""
                cells.append(f"{_signed(r.mean_difference)} {_interval(r.ci_low, r.ci_high)}{star}")
            rows.append([size_of(dataset), _words(comparison), *cells])
    header = ["size", "comparison", "ECE (points)", "Brier x 100", "occlusion AUC x 100"]
    return ("Question 2's measures after the last cycle, mean difference [95% t interval] "
            "(* Holm-adjusted interval excludes 0)\n\n" + _table(header, rows))


def faithfulness(study: Path, summary: pd.DataFrame) -> str:
    """Each map-making arm's ROAD score per cycle, against the same maps moved and against the
    randomised model's maps (paired by seed)."""
    rows = []
    for dataset in _sizes(summary):
        table = _verdicts(study, dataset)
        part = summary[summary.dataset == dataset]
        for arm in [a for a in dict.fromkeys(part.arm) if f"{a} maps - moved maps" in set(table.comparison)]:
            for cycle in sorted(table[table.comparison == f"{arm} maps - moved maps"].cycle.unique()):
                own = part[(part.arm == arm) & (part.cycle == cycle)]
                moved = table[(table.comparison == f"{arm} maps - moved maps") & (table.cycle == cycle)].iloc[0]
                rand = table[(table.comparison == f"{arm} maps - randomised model's maps") & (table.cycle == cycle)]
                rand = rand.iloc[0] if len(rand) else None
                rows.append([size_of(dataset), arm, int(cycle), _plain(own.road_combined_own.mean(), 1, 3),
                             _signed(moved.mean_difference, 1, 3), _interval(moved.ci_low, moved.ci_high, 1, 3),
                             f"{moved.seeds_higher} / {moved.seeds_lower}", moved.verdict_holm,
                             "" if rand is None else _signed(rand.mean_difference, 1, 3),
                             "" if rand is None else _interval(rand.ci_low, rand.ci_high, 1, 3),
                             _plain(own.random_model_rank_corr.mean(), 1, 2), f"{own.n_faithfulness.mean():.0f}"])
    header = ["size", "arm", "cycle", "ROAD own", "own − moved", "95% t interval", "seeds higher / lower",
              "verdict (Holm)", "own − randomised model", "95% t interval", "rank corr. with randomised model",
              "images per seed"]
    return ("Faithfulness of the maps each arm erased by (ROAD combined, higher is more faithful; "
            "paired by seed)\n\n" + _table(header, rows))


def agreement(summary: pd.DataFrame) -> str:
    """The training pass's selection and maps against the separate passes on the same checkpoint."""
    rows = []
    columns = ("agree_jaccard_selected", "agree_map_iou_top10", "agree_map_spearman", "agree_prediction_agreement")
    for dataset in _sizes(summary) if "agree_n_maps" in summary else []:
        part = summary[(summary.dataset == dataset) & summary.agree_n_maps.notna()]
        for arm in dict.fromkeys(part.arm):
            for cycle, g in part[part.arm == arm].groupby("cycle"):
                rows.append([size_of(dataset), arm, int(cycle), *[_plain(g[c].mean(), 1, 2) for c in columns],
                             f"{g.agree_n_maps.mean():.0f}"])
    header = ["size", "arm", "cycle", "selection Jaccard", "map IoU of the top 10%", "map rank corr.",
              "prediction agreement", "maps per seed"]
    return ("The training pass against the separate passes on the same checkpoint (mean over seeds)\n\n"
            + _table(header, rows))


def cost(summary: pd.DataFrame) -> str:
    """Each arm's seconds per cycle (training; its own selection, map and mask stages) and its
    whole cost to the last cycle against plain training's."""
    rows = []
    for dataset in _sizes(summary):
        part = summary[summary.dataset == dataset]
        last = part.cycle.max()
        base = part[(part.kind == "baseline") & (part.cycle == last)].cumulative_seconds.mean()
        for arm in [a for a in dict.fromkeys(part.arm) if a != "finetune"]:
            mine = part[(part.arm == arm) & (part.cycle > 0)]
            total = mine[mine.cycle == last].cumulative_seconds.mean()
            stages = mine.proxy_seconds.mean() if mine.proxy_seconds.notna().any() else 0.0
            rows.append([size_of(dataset), arm, f"{mine.train_seconds.mean():.0f}", f"{stages:.0f}",
                         f"{total:.0f}", f"{total / base:.3f}".replace("-", MINUS)])
    header = ["size", "arm", "training s per cycle", "selection, maps and masks s per cycle",
              "to the last cycle, finetune included (s)", "x baseline"]
    return "Cost (mean over seeds, one thread per job)\n\n" + _table(header, rows)


def time_to_target(summary: pd.DataFrame) -> str:
    """Per size and arm: the seeds that reach plain training's last-cycle accuracy, and when."""

    reach = reach_target(summary)
    rows = []
    for dataset in _sizes(summary):
        part = reach[reach.dataset == dataset]
        for arm, g in part.groupby("arm", sort=False):
            if arm == "finetune":
                continue
            rows.append([size_of(dataset), arm, f"{int(g.reached.sum())} of {len(g)}",
                         _plain(censored_median(g.cycle, g.reached), 1, 1),
                         _plain(censored_median(g.seconds, g.reached), 1, 0), _plain(g.target.iloc[0])])
    header = ["size", "arm", "seeds reaching the target", "median cycle", "median seconds", "target (%)"]
    return ("Time to plain training's last-cycle accuracy, on the 1,000-image sample every cycle is "
            "evaluated on (a median past the seeds that reach it: empty)\n\n" + _table(header, rows))


def _commits(study: Path) -> str:
    import json

    made = json.loads((study / "provenance.json").read_text())
    return ", ".join(c[:7] for c in made.get("job_commits", [])) or "commit not recorded"


def beside(study: Path, other: Path) -> str:
    """The accuracy verdicts of two runs of one design side by side, per size and comparison: each
    run's mean difference, 95% t interval and Holm word at the last cycle, and how far the mean
    moved between them. Refused unless both ran the same design (config apart from seeds) and
    hold the same sizes and comparisons."""
    import json

    study, other = Path(study), Path(other)
    configs = []
    for folder in (study, other):
        made = json.loads((folder / "provenance.json").read_text())
        configs.append({k: v for k, v in made.get("config", {}).items() if k != "seeds"})
    if configs[0] != configs[1]:
        differ = sorted(k for k in set(configs[0]) | set(configs[1]) if configs[0].get(k) != configs[1].get(k))
        raise ValueError(f"{other / 'provenance.json'}: its config differs from {study / 'provenance.json'}'s in "
                         f"more than seeds ({', '.join(differ)}): --beside sets two runs of one design side by side")
    summaries = [pd.read_csv(f / "summary.csv", keep_default_na=False, na_values=[""]) for f in (study, other)]
    sizes = _sizes(summaries[0])
    if sizes != _sizes(summaries[1]):
        raise ValueError(f"{other / 'summary.csv'}: its sizes {_sizes(summaries[1])} are not {study}'s {sizes}")
    rows = []
    for dataset in sizes:
        last = []
        for folder in (study, other):
            table = _verdicts(folder, dataset)
            table = table[table.metric == "accuracy"]
            last.append(table[table.cycle == table.cycle.max()].set_index("comparison"))
        if list(last[0].index) != list(last[1].index) or last[0].cycle.iloc[0] != last[1].cycle.iloc[0]:
            raise ValueError(f"{dataset}: the two runs' verdict tables hold other comparisons or cycles "
                             f"({list(last[0].index)} at cycle {last[0].cycle.iloc[0]}; {list(last[1].index)} "
                             f"at cycle {last[1].cycle.iloc[0]})")
        for comparison in last[0].index:
            a, b = last[0].loc[comparison], last[1].loc[comparison]
            rows.append([size_of(dataset), _words(comparison),
                         _signed(a.mean_difference), _interval(a.ci_low, a.ci_high), a.verdict_holm,
                         _signed(b.mean_difference), _interval(b.ci_low, b.ci_high), b.verdict_holm,
                         _signed(a.mean_difference - b.mean_difference)])
    names = [f"{f.name} ({_commits(f)}; {s.seed.nunique()} seeds)" for f, s in zip((study, other), summaries)]
    header = ["size", "comparison", f"{names[0]}: mean (points)", "95% t interval", "verdict (Holm)",
              f"{names[1]}: mean (points)", "95% t interval", "verdict (Holm)", "moved (points)"]
    return (f"Accuracy verdicts after the last cycle, {study.name} beside {other.name}, the same design\n\n"
            + _table(header, rows))


def tables(study, other=None) -> dict:
    """Every table of the page, by name, in the page's order; with ``other`` (a run of the same
    design), its verdicts beside this one's last."""
    study = Path(study)
    summary = pd.read_csv(study / "summary.csv", keep_default_na=False, na_values=[""])
    out = {"accuracy": accuracy(summary)}
    for dataset in _sizes(summary):
        out[f"verdicts {size_of(dataset)}"] = verdicts(study, summary, dataset)
    out["measures"] = measures(study, summary)
    out["faithfulness"] = faithfulness(study, summary)
    out["agreement"] = agreement(summary)
    out["cost"] = cost(summary)
    out["time to target"] = time_to_target(summary)
    if other is not None:
        out["beside"] = beside(study, Path(other))
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a committed study folder (summary.csv and tables/ as redrawn from it)")
    parser.add_argument("--beside", metavar="OTHER", help="another run of the same design (a study folder "
                        "as above): its accuracy verdicts beside this one's, as the last table")
    args = parser.parse_args()
    for name, text in tables(args.study, args.beside).items():
        print(f"<!-- {name} -->\n{text}\n")
