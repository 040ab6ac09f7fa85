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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .layout import run_dir

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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", help="a summary.csv the workflow wrote (its run folders beside it)")
    parser.add_argument("out_dir", help="where per_image.npz and epochs.csv go")
    parser.add_argument("--results", default=None, help="the results folder (default: the summary's folder)")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = pack(args.summary, out / "per_image.npz", args.results)
    rows = epochs(args.summary, out / "epochs.csv", args.results)
    print(f"{out / 'per_image.npz'}: {made['cells']} cells, {made['bytes'] / 1e6:.2f} MB; {out / 'epochs.csv'}: {rows} rows")
