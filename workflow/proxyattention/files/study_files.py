"""A study's files for the repository: its per-image results in one small file (and back), and
every training job's epochs in one table.

Every evaluation writes ``per_image.npz`` into its run folder (evaluate.per_image: row, true
class, predicted class, the true class's and the top probability, and, in runs made after study 2, each
image's Brier term, per split), and every training
job ``epochs.csv``. A committed study keeps them as ``per_image.npz`` and ``epochs.csv`` beside
its summary:

    python -m proxyattention.files.study_files results/study2/summary.csv docs/study2

Each split's rows and labels are stored once per dataset and set of images (the cells of a
dataset evaluate the same images, but for the cycles evaluated on the epoch sample under
``evaluation.full_split: final``: a second set, its cells marked), predicted classes exactly
(``uint8`` while there are at most 256 classes),
the two probabilities as float16 (three significant digits: enough for any calibration
reanalysis, and nothing in the verdict tables reads them), and the Brier terms as written
(float32: a term near zero keeps no float16 precision, and the Brier score is their mean). ``unpack`` writes one ``per_image.npz``
per cell again, so the tables redraw with their image-level intervals
(``python -m proxyattention.stages.figures SUMMARY OUT --per-image PACK``).

A study run in batches of seeds whose run folders are not all on one machine is committed batch by
batch and joined with ``merge`` (each part a folder of the four files, the seeds disjoint):

    python -m proxyattention.files.study_files merge docs/study3 docs/study3 /tmp/batch3

The merged summary has the rows of every part in the order aggregate gives one run of all their
seeds; the pack, each cell's arrays as its part held them; ``provenance.json`` every part's
commits, versions and config digest (``parts``), and the union of their commits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .layout import KEYS, run_dir

SHARED = ("index", "label")
PROBABILITIES = ("p_true", "p_top")  # stored float16; other fields (the Brier terms) as they are
SEP = "|"


def cells_of(summary_csv) -> list[tuple]:
    """(dataset, model, seed, arm, cycle) of every row of a summary, in its order."""
    frame = pd.read_csv(summary_csv, keep_default_na=False, na_values=[""])
    return [(r.dataset, r.model, int(r.seed), r.arm, int(r.cycle)) for r in frame.itertuples()]


def pack(summary_csv, out_npz, results: str | None = None) -> dict:
    """Pack the per_image.npz of every cell of ``summary_csv`` (under ``results``, default the
    summary's folder) into ``out_npz``; returns what it holds (cells, images per split, bytes)."""
    results = str(Path(summary_csv).parent if results is None else results)
    arrays: dict[str, np.ndarray] = {}
    variants: dict[tuple, list] = {}
    cells = cells_of(summary_csv)
    for cell in cells:
        path = Path(run_dir(results, *cell)) / "per_image.npz"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no per-image file for {cell} (did its evaluation run?)")
        name = SEP.join(str(v) for v in cell)
        with np.load(path) as f:
            for split in sorted({key.partition("_")[0] for key in f.files if key.partition("_")[2] in SHARED}):
                # the images a cell was evaluated on: stored once per dataset and set of images (a
                # cycle evaluated on the epoch sample, evaluation.full_split: final, has its own set)
                mine = {field: f[f"{split}_{field}"] for field in SHARED}
                known = variants.setdefault((cell[0], split), [])
                number = next((i for i, v in enumerate(known)
                               if all(np.array_equal(v[k], mine[k]) for k in SHARED)), len(known))
                if number == len(known):
                    known.append(mine)
                    prefix = cell[0] if number == 0 else f"{cell[0]}{SEP}{number}"
                    for field in SHARED:
                        arrays[f"{prefix}{SEP}{split}_{field}"] = mine[field]
                if number:  # cells of the first set need no mark (packs made before sets had none)
                    arrays[f"{name}{SEP}{split}_images"] = np.array(number)
            for key in f.files:
                split, _, field = key.partition("_")
                value = f[key]
                if field in SHARED:
                    continue
                elif field == "prediction":
                    arrays[f"{name}{SEP}{key}"] = value.astype(np.uint8 if value.max(initial=0) < 256 else np.int64)
                elif field in PROBABILITIES:
                    arrays[f"{name}{SEP}{key}"] = value.astype(np.float16)
                else:
                    arrays[f"{name}{SEP}{key}"] = value
    with atomic_path(out_npz) as tmp:
        np.savez_compressed(tmp, **arrays)
    return {"cells": len(cells), "bytes": Path(out_npz).stat().st_size}


def unpack(pack_npz, out_dir) -> dict:
    """Write one per_image.npz per packed cell under ``out_dir`` (the run folders' layout) and
    return {(dataset, model, seed, arm, cycle): path}, as aggregate.verdicts reads them."""
    out: dict[tuple, Path] = {}
    with np.load(pack_npz) as f:
        per_cell: dict[tuple, dict] = {}
        shared, images_of = {}, {}
        for key in f.files:
            parts = key.split(SEP)
            if len(parts) in (2, 3):  # (dataset, [set number,] split_field): the images a set of cells saw
                shared[(parts[0], 0 if len(parts) == 2 else int(parts[1]), parts[-1])] = f[key]
                continue
            if len(parts) != 6:
                raise ValueError(f"{pack_npz}: '{key}' is not an array of a packed study; pack the run's "
                                 "per-image files with python -m proxyattention.files.study_files SUMMARY OUT_DIR")
            dataset, model, seed, arm, cycle, field = parts
            cell = (dataset, model, int(seed), arm, int(cycle))
            value = f[key]
            if field.endswith("_images"):
                images_of[(cell, field.partition("_")[0])] = int(value)
                continue
            per_cell.setdefault(cell, {})[field] = (value.astype(np.int64) if field.endswith("_prediction")
                                                    else value.astype(np.float32) if value.dtype == np.float16
                                                    else value)
    for cell, fields in per_cell.items():
        splits = {k.partition("_")[0] for k in fields}
        for split in splits:
            for name in SHARED:
                fields[f"{split}_{name}"] = shared[(cell[0], images_of.get((cell, split), 0), f"{split}_{name}")]
        path = Path(run_dir(str(out_dir), *cell)) / "per_image.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **fields)
        out[cell] = path
    return out


def epochs(summary_csv, out_csv, results: str | None = None) -> int:
    """Every training job's ``epochs.csv`` of the cells of ``summary_csv`` in one table, led by
    the cell's dataset, model, arm, seed and cycle, each job's last curve point from its evaluation
    (stages/train.py epoch_curve); returns its number of rows."""
    from ..settings.sizes import base_of
    from ..analysis.curves import epoch_curve
    from .atomic import write_csv
    from .layout import prepared_dir

    results = str(Path(summary_csv).parent if results is None else results)
    parts = []
    for dataset, model, seed, arm, cycle in cells_of(summary_csv):
        path = Path(run_dir(results, dataset, model, seed, arm, cycle)) / "epochs.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no epochs file for {(dataset, model, seed, arm, cycle)}")
        table = epoch_curve(path, path.with_name("per_image.npz"),
                            Path(prepared_dir(results, base_of(dataset))) / "index.csv")
        for i, (key, value) in enumerate({"dataset": dataset, "model": model, "arm": arm, "seed": seed,
                                          "cycle": cycle}.items()):
            table.insert(i, key, value)
        parts.append(table)
    table = pd.concat(parts, ignore_index=True)
    write_csv(out_csv, table)
    return len(table)


def merge(out_dir, parts: list) -> dict:
    """Join study folders (``summary.csv``, ``per_image.npz``, ``epochs.csv``, ``provenance.json``
    each) of disjoint seeds into ``out_dir`` (which may be one of them); returns cells and rows."""
    import json
    import shutil
    import tempfile

    from .provenance import config_digest
    from .atomic import write_csv, write_json

    parts = [Path(p) for p in parts]
    for part in parts:
        for name in ("summary.csv", "per_image.npz", "epochs.csv", "provenance.json"):
            if not (part / name).exists():
                raise FileNotFoundError(f"{part / name}: a part to merge holds a study's four files "
                                        "(python -m proxyattention.files.study_files SUMMARY OUT_DIR writes them)")
    frames = [pd.read_csv(p / "summary.csv", keep_default_na=False, na_values=[""]) for p in parts]
    seeds = [set(f.seed) for f in frames]
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            if seeds[i] & seeds[j]:
                raise ValueError(f"{parts[i]} and {parts[j]} both hold seed(s) {sorted(seeds[i] & seeds[j])}: "
                                 "merge joins batches of different seeds")
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    frame = pd.concat(frames, ignore_index=True)[columns]
    datasets = list(dict.fromkeys(frame.dataset))  # each part in aggregate's order: first seen, first
    arms = list(dict.fromkeys(frame.arm))

    def rank(column: pd.Series) -> pd.Series:
        order = {"dataset": datasets, "arm": arms}.get(column.name)
        return column.map(order.index) if order else column

    frame = frame.sort_values(KEYS, key=rank, kind="stable").reset_index(drop=True)
    provenances = [json.loads((p / "provenance.json").read_text()) for p in parts]
    config = {**provenances[0].get("config", {}), "seeds": sorted({int(s) for f in frames for s in f.seed})}
    for part, made in zip(parts[1:], provenances[1:]):  # batches of one design: the same config but seeds
        theirs = {**made.get("config", {}), "seeds": config["seeds"]}
        if theirs != config:
            differ = sorted(k for k in set(config) | set(theirs) if config.get(k) != theirs.get(k))
            raise ValueError(f"{part / 'provenance.json'}: its config differs from {parts[0] / 'provenance.json'}'s "
                             f"in more than seeds ({', '.join(differ)}): these are not batches of one study")
    epoch_rows = pd.concat([pd.read_csv(p / "epochs.csv", keep_default_na=False, na_values=[""])
                            for p in parts], ignore_index=True)
    epoch_rows = epoch_rows.sort_values(["dataset", "model", "arm", "seed", "cycle"], key=rank,
                                        kind="stable").reset_index(drop=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="study_merge_") as tmp:
        for part in parts:  # every cell's per-image file in one tree, then packed as one run's
            unpack(part / "per_image.npz", tmp)
        summary = Path(tmp) / "summary.csv"
        write_csv(summary, frame)
        made = pack(summary, Path(tmp) / "per_image.npz", tmp)
        with atomic_path(out / "per_image.npz") as target:  # each file atomic; the summary last
            shutil.copyfile(Path(tmp) / "per_image.npz", target)
    write_csv(out / "epochs.csv", epoch_rows)
    write_csv(out / "summary.csv", frame)
    first = provenances[0]
    write_json(out / "provenance.json", {
        "job_commits": sorted({c for p in provenances for c in p.get("job_commits", [])}),
        "versions": {k: sorted({v for p in provenances for v in p.get("versions", {}).get(k, [])})
                     for k in sorted({k for p in provenances for k in p.get("versions", {})})},
        "comparisons": first.get("comparisons"),
        "stop_rule": first.get("stop_rule"),
        "config_digest": config_digest(config),  # the design's, with every part's seeds
        "config": config,
        "parts": [{k: v for k, v in p.items() if k != "config"} for p in provenances],
    })
    return {"cells": made["cells"], "rows": len(frame), "epoch_rows": len(epoch_rows)}


if __name__ == "__main__":
    import argparse
    import sys

    if sys.argv[1:2] == ["merge"]:
        parser = argparse.ArgumentParser(prog="python -m proxyattention.files.study_files merge",
                                         description=merge.__doc__.split("\n\n")[0])
        parser.add_argument("out_dir", help="where the merged four files go (may be one of the parts)")
        parser.add_argument("parts", nargs="+", help="study folders of disjoint seeds")
        args = parser.parse_args(sys.argv[2:])
        made = merge(args.out_dir, args.parts)
        print(f"{args.out_dir}: {made['rows']} summary rows, {made['cells']} packed cells, "
              f"{made['epoch_rows']} epoch rows")
        sys.exit(0)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", help="a summary.csv the workflow wrote (its run folders beside it)")
    parser.add_argument("out_dir", help="where per_image.npz and epochs.csv go, the summary and its "
                        "provenance.json copied beside them")
    parser.add_argument("--results", default=None, help="the results folder (default: the summary's folder)")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = pack(args.summary, out / "per_image.npz", args.results)
    rows = epochs(args.summary, out / "epochs.csv", args.results)
    import shutil

    for name in ("summary.csv", "provenance.json"):  # the study's four files in one folder
        source = Path(args.summary) if name == "summary.csv" else Path(args.summary).with_name(name)
        if source.exists() and (not (out / name).exists() or not source.samefile(out / name)):
            with atomic_path(out / name) as tmp:
                shutil.copyfile(source, tmp)
    print(f"{out / 'per_image.npz'}: {made['cells']} cells, {made['bytes'] / 1e6:.2f} MB; {out / 'epochs.csv'}: {rows} rows")
