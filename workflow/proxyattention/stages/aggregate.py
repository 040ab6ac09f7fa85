"""Stage ``aggregate``: one summary table for the grid, and comparison tables per dataset (their
verdicts from analysis/verdicts.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.faithfulness import summary_columns as faithfulness_columns
from ..analysis.verdicts import (
    COMPARISONS,
    DEFAULT_ARMS,
    EFFECT_OF_INTEREST,
    answers,
    comparison,
    verdict_split,
    verdicts,
    verdicts_html,
)
from ..files.atomic import atomic_path, read_json, write_csv, write_json
from ..files.layout import CELL, KEYS
from ..runtime.timing import last_stage_seconds, timed_stage

log = logging.getLogger(__name__)

ATTENTION_COLUMNS = ["occlusion_0", "occlusion_20", "occlusion_40", "occlusion_60", "occlusion_80", "occlusion_auc",
                     "n_occlusion", "ece", "brier", "n_calibration", "map_top10_mass", "map_entropy", "n_maps",
                     "map_in_object", "object_share", "pointing_game", "n_localised"]
METRICS = ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "top5_accuracy", "val_loss"]
TEST_METRICS = ["accuracy", "balanced_accuracy", "f1_macro", "loss"]


def summarise(cells: list, metrics_paths: list, erased_tables: dict | None = None,
              dataset_infos: dict | None = None, arms: list | None = None,
              stage_logs: dict | None = None, arm_specs: dict | None = None,
              faithfulness_paths: dict | None = None, agreement_paths: dict | None = None,
              curve: dict | None = None, measures_paths: list | None = None,
              stage_benchmarks: dict | None = None, versions: list | None = None) -> pd.DataFrame:
    """One row per (dataset, model, arm, seed, cycle) with every metric, time and memory.

    ``cells`` and ``metrics_paths`` are parallel. Cumulative time and images add
    the shared finetune (cycle 0) to each arm's cycles. ``erased_tables`` maps a
    cell to its ``erased.csv`` for the arms that erase; ``dataset_infos`` a dataset
    to its prepared ``classes.json`` (for the count of skipped bad images and where its held-out
    splits come from: ``val_origin``, ``test_origin``);
    ``stage_logs`` a cell of an adding arm to {stage: the log of the job it used}
    (find_misclassified, compute_cams, mask_and_save): their own time is the arm's
    ``proxy_seconds``, counted in full by every arm that used a shared job, since each would
    pay it alone (a log without its time: the job's benchmark file from ``stage_benchmarks``, said in
    ``cost_note``). ``cumulative_seconds`` is training plus those stages;
    ``cumulative_train_seconds`` training alone. ``arm_specs`` (the config's ``arms`` mapping)
    gives each row its arm's ``kind`` and ``matches``, so the summary alone says what to compare.
    ``faithfulness_paths`` maps a proxy-kind arm's cell to its ``faithfulness.json``: those rows get
    the faithfulness columns (analysis/faithfulness.py, SUMMARY_KEYS and the mean curves).
    ``agreement_paths`` maps a training-pass arm's cell to its ``agreement.json``: those rows get the
    ``agree_`` columns (stages/agreement.py). ``measures_paths`` (parallel to ``cells``): each cell's
    ``measures.json``, question 2's measures (stages/evaluate.py measure); without it they are read
    from ``metrics.json`` (results written before the measure stage). ``versions``, when given, gets
    each ``metrics.json``'s ``versions`` in order (each file is parsed once: it holds a K x K
    confusion matrix).

    ``size`` (a training size, ``n20pc``; empty without one), ``train_per_class`` (the size's images
    per class as written, or the training images over the classes) and ``n_train`` (the original
    training images of the run's finetune) say how much data a row trained on. ``curve`` ({"epoch_sample":
    n, "indexes": {dataset: its prepared index.csv}, "per_image": {cell: per_image.npz}}) adds
    ``curve_accuracy``: each row's accuracy on the epoch sample of the verdicts' split (the images
    every epoch's curve point uses, data/splits.py curve_sample), and ``curve_images``; time to target
    reads it at every cycle, whatever split each cycle was evaluated on (``verdict_sample``: the
    sample's size when ``evaluation.full_split: final`` cut that cycle's evaluation to it, else empty).
    """
    from ..settings.sizes import nominal, size_of

    infos = {d: read_json(p) for d, p in (dataset_infos or {}).items()}
    samples = _curve_samples(curve)
    rows = []
    for i, (cell, path) in enumerate(zip(cells, metrics_paths)):
        m = read_json(path)
        if versions is not None:
            versions.append(m.get("versions"))
        row = dict(zip(CELL, cell))
        spec = (arm_specs or {}).get(row["arm"], {"kind": "finetune" if row["arm"] == "finetune" else row["arm"]})
        row["kind"], row["matches"] = spec["kind"], spec.get("matches") or ""
        row.update({k: m.get(k, np.nan) for k in METRICS})
        test = m.get("test", {})  # the held-out test split, when the dataset has one
        row.update({f"test_{k}": test.get(k, np.nan) for k in TEST_METRICS})
        row["n_test"] = test.get("n_test", 0)
        # Question 2's measures, on the verdicts' split
        measured = read_json(measures_paths[i])["attention"] if measures_paths else m.get("attention", {})
        row.update({k: measured.get(k, np.nan) for k in ATTENTION_COLUMNS})
        row.update({k: m.get(k) for k in ("train_seconds", "wall_seconds", "epochs", "images_seen", "n_train_extra",
                                          "peak_memory_mib", "peak_memory_kind", "device", "precision", "ran",
                                          "stop_reason", "n_val", "pretrained")})
        row["run_dir_mib"] = _folder_mib(Path(path).parent)
        info = infos.get(row["dataset"], {})
        row["size"] = size_of(row["dataset"]) or ""
        row["n_train_original"] = m.get("n_train_original", np.nan)
        row["verdict_sample"] = m.get("verdict_sample") if m.get("verdict_sample") is not None else np.nan
        if row["size"]:
            kind, value = nominal(row["size"])
            row["train_per_class"] = value if kind == "per_class" else value / max(len(info.get("classes", [])), 1)
        elif info.get("classes"):
            row["train_per_class"] = info.get("n_train", np.nan) / len(info["classes"])
        row.update(_curve_point(samples, row["dataset"], (curve or {}).get("per_image", {}).get(tuple(cell))))
        row["n_skipped_images"] = info.get("n_skipped", 0)
        origins = info.get("split_origins") or {}  # older prepared folders: not recorded
        row["val_origin"], row["test_origin"] = origins.get("val") or "", origins.get("test") or ""
        row.update(added_counts((erased_tables or {}).get(tuple(cell))))
        row["proxy_seconds"], row["cost_note"] = proxy_seconds((stage_logs or {}).get(tuple(cell), {}),
                                                             (stage_benchmarks or {}).get(tuple(cell)))
        measured = (faithfulness_paths or {}).get(tuple(cell))
        if measured is not None:
            row.update(faithfulness_columns(read_json(measured)))
        agreed = (agreement_paths or {}).get(tuple(cell))
        if agreed is not None:
            from .agreement import summary_columns as agreement_columns

            row.update(agreement_columns(read_json(agreed)))
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))  # faithfulness columns: proxy rows only
    frame = pd.DataFrame(rows, columns=columns)[KEYS + [k for k in columns if k not in KEYS]]
    finetune = frame[frame.cycle == 0].set_index(["dataset", "model", "seed"])
    # the run's original training images: its finetune's (a cycle the stop rule skipped trained none)
    frame["n_train"] = [finetune.loc[(r.dataset, r.model, r.seed), "n_train_original"] for r in frame.itertuples()]
    frame = frame.drop(columns="n_train_original")
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
    datasets = list(dict.fromkeys(str(c[0]) for c in cells))  # the grid's order: training sizes smallest first

    def rank(column: pd.Series) -> pd.Series:
        if column.name == "arm":
            return column.map(order.index)
        return column.map(datasets.index) if column.name == "dataset" else column

    return frame.sort_values(KEYS, key=rank).reset_index(drop=True)


def _curve_samples(curve: dict | None) -> dict:
    """{dataset: (split, sample rows)} of the epoch sample (data/splits.py curve_sample)."""
    from ..data.splits import curve_sample, verdict_split

    out = {}
    for dataset, index_path in ((curve or {}).get("indexes") or {}).items():
        index = pd.read_csv(index_path, keep_default_na=False)
        out[dataset] = (verdict_split(index), curve_sample(index, curve["epoch_sample"]))
    return out


def _curve_point(samples: dict, dataset: str, per_image_path) -> dict:
    """A cell's accuracy on the epoch sample, from its per-image results (NaN when not known)."""
    if dataset not in samples or per_image_path is None or not Path(per_image_path).exists():
        return {}
    split, wanted = samples[dataset]
    with np.load(per_image_path, allow_pickle=False) as data:
        if f"{split}_index" not in data:
            return {}
        at = np.isin(data[f"{split}_index"], wanted)
        right = data[f"{split}_prediction"][at] == data[f"{split}_label"][at]
    if int(at.sum()) != len(wanted) or not len(wanted):
        return {"curve_accuracy": np.nan, "curve_images": int(at.sum())}
    return {"curve_accuracy": float(right.mean()), "curve_images": len(wanted)}


def benchmark_seconds(path) -> float:
    """A job's wall seconds from its Snakemake benchmark file (a TSV whose ``s`` column is the job's
    wall time, written when the job succeeds). Raises OSError or ValueError naming the file."""
    table = pd.read_csv(path, sep="\t")
    if "s" not in table or not len(table):
        raise ValueError(f"{path}: no 's' column (not a Snakemake benchmark file)")
    return float(table["s"].iloc[-1])


def log_span_seconds(path) -> float:
    """Seconds from a job log's first timestamped line to its last (the logging format's asctime,
    ``2026-12-04 16:30:01,123``): the job's time when its stage line is missing (an attempt whose
    outputs were complete when it was stopped). Raises ValueError naming the log without two."""
    import re
    from datetime import datetime

    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", Path(path).read_text(), re.M)
    if len(stamps) < 2:
        raise ValueError(f"{path}: fewer than two timestamped lines")
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def proxy_seconds(logs: dict, benchmarks: dict | None = None) -> tuple[float, str]:
    """(seconds, note): the Proxy Attention stages' own time for one cell, from {stage: log}. A
    stage whose log holds no time (an interrupted attempt's log) counts its job's benchmark
    (``benchmarks``: {stage: its Snakemake benchmark file}, the whole job's wall time, a little more
    than the stage's own), else the span of its log's timestamps, and the note says which; NaN when
    none is there, with the note naming what is missing, rather than a number that leaves it out."""
    total, notes = 0.0, []
    for stage, path in logs.items():
        try:
            total += last_stage_seconds(path, stage)
            continue
        except (OSError, ValueError) as err:
            missing = str(err)
        bench = (benchmarks or {}).get(stage)
        try:
            if bench is None:
                raise OSError("no benchmark file")
            total += benchmark_seconds(bench)
            notes.append(f"{stage}: job wall time from {bench} ({missing})")
            continue
        except (OSError, ValueError) as err:
            no_bench = str(err)
        try:
            total += log_span_seconds(path)
            notes.append(f"{stage}: from the first to the last timestamp of {path} ({missing}; {no_bench})")
        except (OSError, ValueError) as err:
            log.warning("cost of %s unknown: %s; %s; %s", stage, missing, no_bench, err)
            return np.nan, f"{stage} unknown: {missing}; {no_bench}; {err}"
    for note in notes:
        log.warning("cost of %s", note)
    return total, "; ".join(notes)


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
    """Disk use of a run folder (checkpoint, maps, erased images), in MiB: its files, and its erased
    PNGs by the sizes erased.csv records (``png_bytes``), so no folder of one PNG per added image is
    walked; an older erased.csv without them: the folder is walked."""
    table = folder / "erased.csv"
    recorded = None
    if table.exists():
        columns = pd.read_csv(table, nrows=0).columns
        if "png_bytes" in columns:
            recorded = int(pd.read_csv(table, usecols=["png_bytes"]).png_bytes.sum())
    total = 0
    for entry in folder.iterdir():
        if entry.is_file():
            total += entry.stat().st_size
        elif entry.is_dir() and not (entry.name == "erased" and recorded is not None):
            total += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
    return (total + (recorded or 0)) / 2**20


@timed_stage
def aggregate(cells: list, metrics_paths: list, erased_tables: dict, out_summary, out_tables: dict,
              dataset_infos: dict | None = None, arms: list | None = None, comparisons: list | None = None,
              out_verdicts: dict | None = None, stop_rule: bool = False, stage_logs: dict | None = None,
              config: dict | None = None, effect_of_interest: float = EFFECT_OF_INTEREST,
              per_image_paths: list | None = None, faithfulness_paths: dict | None = None,
              agreement_paths: dict | None = None, index_paths: dict | None = None,
              measures_paths: list | None = None, stage_benchmarks: dict | None = None,
              out_compared=None) -> None:
    """Write ``summary.csv``, ``provenance.json`` and ``provenance.html`` beside it (``config``:
    the validated config), and per dataset a comparison table (``out_tables``: dataset -> path)
    and a verdict table (``out_verdicts``: dataset -> path)."""
    from ..files import provenance

    arm_specs = (config or {}).get("arms") if isinstance((config or {}).get("arms"), dict) else None
    images = {(c[0], c[1], int(c[2]), c[3], int(c[4])): p for c, p in zip(cells, per_image_paths or [])}
    curve = {"epoch_sample": (config or {}).get("training", {}).get("epoch_sample", 1000),
             "indexes": index_paths or {}, "per_image": {tuple(c): p for c, p in zip(cells, per_image_paths or [])}}
    versions = []
    frame = summarise(cells, metrics_paths, erased_tables, dataset_infos, arms, stage_logs, arm_specs,
                      faithfulness_paths, agreement_paths, curve, measures_paths, stage_benchmarks, versions)
    comparisons = COMPARISONS if comparisons is None else comparisons
    unmatched = []
    if isinstance((config or {}).get("arms"), dict) and "proxy" in config:
        from ..settings.arms import unmatched_pairs

        unmatched = unmatched_pairs(config)
    made = provenance.gather(config or {}, versions, comparisons, stop_rule)
    if len(made["job_commits"]) > 1:
        log.warning("the jobs of this run ran from %d commits: %s", len(made["job_commits"]),
                    ", ".join(made["job_commits"]))
    write_json(Path(out_summary).with_name("provenance.json"), made)
    if out_compared is not None:  # the report's "what was compared", from the config that ran
        from ..files.describe import compared

        with atomic_path(out_compared) as tmp:
            tmp.write_text(compared(config))
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
        table = verdicts(frame, dataset, comparisons, stop_rule=stop_rule, effect_of_interest=effect_of_interest,
                         per_image=images)
        write_csv(path, table)
        proxy_arms = sorted(set(frame.loc[frame.kind == "proxy", "arm"]))
        positive = sorted(set(frame.loc[frame.kind == "erasing", "arm"]))
        with atomic_path(Path(path).with_name(Path(path).name.replace("_verdicts.csv", "_answer.md"))) as tmp:
            tmp.write_text(answers(table, proxy_arms, unmatched, positive))
        with atomic_path(Path(path).with_suffix(".html")) as tmp:
            tmp.write_text(verdicts_html(table, dataset, provenance.summary_line(made)))
        for r in table.itertuples():
            log.info("%s/%s %s: %+.4f [%+.4f, %+.4f] over %d seed pair(s): %s", dataset, r.model, r.comparison,
                     r.mean_difference, r.ci_low, r.ci_high, r.n_pairs, r.verdict)
