"""Stages ``select_from_record`` and ``maps_from_record``: the selection and the maps of an arm whose
``proxy.selection.source`` or ``proxy.maps_source`` is ``training_pass``, read from the previous
training job's record (``training_pass.npz``, training/record.py) instead of a separate pass.

They write the files find_misclassified and compute_cams write (``predictions.csv`` and
``selected.csv``; ``cams.npz`` and ``cams.csv``), so mask_and_save and everything after it read
the same hand-off. Neither loads a model: each costs a read of the record.

What differs from the separate passes: the record comes from the last epoch's training forward
(train mode, the augmented view, the weights as they were at that step, not the final ones); a
map recorded on a cropped and flipped view is brought back to the original image with that
view's own crop offset and flip, and the pixels the view did not cover are NaN in ``cams.npz``
(never masked; thresholds are taken over the covered pixels).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..files.atomic import atomic_path, read_json, write_csv
from ..runtime.timing import timed_stage
from .find_misclassified import COLUMNS, select

log = logging.getLogger(__name__)


class RecordMissing(RuntimeError):
    """The record holds nothing this stage needs (the job that wrote it did not record)."""


SELECTION_KEYS = ("recorded", "index", "label", "prediction", "confidence", "true_probability", "loss", "met")


def load_record(path, keys=None) -> dict:
    """The record's arrays (only ``keys`` when given: the selection never reads the maps)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files if keys is None or key in keys}


def record_table(record: dict, index: pd.DataFrame) -> pd.DataFrame:
    """One row per original training image, as find_misclassified's table, plus ``met`` (the order
    the recorded epoch met it; -1: not met)."""
    sources = index.set_index("index").loc[record["index"], "source"].to_numpy()
    return pd.DataFrame({
        "index": record["index"], "source": sources, "label": record["label"],
        "prediction": record["prediction"], "confidence": record["confidence"],
        "true_probability": record["true_probability"], "loss": record["loss"], "met": record["met"],
    })


@timed_stage
def select_from_record(settings: dict, index_path, record_path, out_predictions, out_selected,
                       run: bool = True) -> None:
    """The selection rule of ``proxy.selection`` applied to the record's training-pass predictions,
    in ``selection.order`` (``loss``: highest first, as the separate pass; ``met``: the order the
    epoch met them, the thesis's "first 20%"). Images the epoch did not meet are never selected."""
    columns = COLUMNS + ["met"]
    if not run:
        for out in (out_predictions, out_selected):
            write_csv(out, pd.DataFrame(columns=columns))
        return
    record = load_record(record_path, SELECTION_KEYS)
    if not bool(record["recorded"]):
        raise RecordMissing(f"{record_path} holds no record: the training job that wrote it did not record "
                            "(its settings had no 'record'); rerun it with the config that has this arm")
    from ..data.splits import restrict_to_size

    index = restrict_to_size(pd.read_csv(index_path, keep_default_na=False), settings.get("train_size"),
                             str(index_path))
    table = record_table(record, index)
    met = table[table.met >= 0]
    if len(met) < len(table):
        log.info("%d training images were not met by the recorded epoch and cannot be selected", len(table) - len(met))
    sel = settings["proxy"]["selection"]
    chosen = select(met, sel["rule"], sel["confidence_below"], sel["max_count"], sel["max_fraction"],
                    order=sel.get("order", "loss"))
    write_csv(out_predictions, table)
    write_csv(out_selected, chosen)
    log.info("selected %d of %d training images from the training pass (order: %s)", len(chosen), len(met),
             sel.get("order", "loss"))


def view_to_original(maps: np.ndarray, plan: np.ndarray, padding: int) -> np.ndarray:
    """Maps (N, S, S) of augmented views back onto their original images: the view showed the
    zero-padded image from offset (dy, dx), flipped when ``plan[:, 2]``; original pixels the view did
    not cover are NaN."""
    n, h, w = maps.shape
    dy, dx, flip = plan[:, 0:1], plan[:, 1:2], plan[:, 2:3].astype(bool)
    ys = np.arange(h)[None, :] - dy + padding  # (N, H): the view row showing original row y
    xs = np.arange(w)[None, :] - dx + padding  # (N, W): unflipped view column of original column x
    xs = np.where(flip, w - 1 - xs, xs)
    inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    out = maps[np.arange(n)[:, None, None], np.clip(ys, 0, h - 1)[:, :, None], np.clip(xs, 0, w - 1)[:, None, :]]
    return np.where(inside, out, np.nan).astype(np.float32)


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Layer-resolution maps (N, h, w) to (N, size, size) as the separate pass post-processes
    (GapLinearCAM: bilinear resize, then min-max)."""
    from ..models.cams import _minmax

    x = torch.from_numpy(np.asarray(maps, dtype=np.float32))
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return _minmax(x).numpy()


@timed_stage
def maps_from_record(settings: dict, classes_path, record_path, selected_csv, out_cams, out_table,
                     batch_size: int = 256) -> None:
    """``cams.npz`` for the rows of ``selected_csv`` from the record's maps, each brought back from
    its view to the original image (uncovered pixels NaN). A map the record marks invalid (a step
    the grad scaler skipped, or an image the epoch did not meet) is written empty (all zero)."""
    t0 = time.perf_counter()
    selected = pd.read_csv(selected_csv, keep_default_na=False)
    size = int(read_json(classes_path)["image_size"])
    if not len(selected):  # nothing selected (or a cycle the stop rule skipped): no map to read
        with atomic_path(out_cams) as tmp:
            np.savez(tmp, maps=np.zeros((0, size, size), np.float16), index=np.zeros(0, np.int64),
                     target=np.zeros(0, np.int64))
        write_csv(out_table, pd.DataFrame(columns=["position", "index", "target", "explains", "empty", "method",
                                                   "implementation", "layer", "seconds_total", "valid",
                                                   "covered_fraction"]))
        return
    record = load_record(record_path, ("recorded", "index", "map_valid", "crop_padding", "plan", "target", "method",
                                       "layer"))
    if bool(record["recorded"]) and "map_valid" in record:
        from ..files.artifacts import npz_array

        record["maps"] = npz_array(record_path, "maps")  # memory-mapped: only the selected rows are read
    if not bool(record["recorded"]) or "maps" not in record or record["maps"].ndim != 3 or not record["maps"].shape[1]:
        raise RecordMissing(f"{record_path} holds no maps: the training job that wrote it recorded none; rerun it "
                            "with the config that has this arm")
    position = pd.Series(np.arange(len(record["index"])), index=record["index"])
    rows = selected["index"].to_numpy(dtype=np.int64) if len(selected) else np.zeros(0, np.int64)
    where = position.loc[rows].to_numpy() if len(rows) else np.zeros(0, np.int64)
    valid = record["map_valid"][where]
    padding = int(record["crop_padding"])
    target = str(record["target"])
    targets = selected["label" if target == "label" else "prediction"].to_numpy(dtype=np.int64)
    empty = np.zeros(len(rows), dtype=bool)
    covered = np.zeros(len(rows))
    from ..data.erasing import covered_fraction
    from ..files.artifacts import NpzWriter, empty_maps

    def batches():
        """The maps a batch at a time: memory does not grow with the selection."""
        for start in range(0, len(rows), batch_size):
            part = slice(start, start + batch_size)
            pos = where[part]
            back = view_to_original(upsample(np.asarray(record["maps"][pos]), size), record["plan"][pos], padding)
            back[~valid[part]] = 0.0
            back = back.astype(np.float16)
            empty[part], covered[part] = empty_maps(back.astype(np.float32)), covered_fraction(back)
            yield back

    with atomic_path(out_cams) as tmp, NpzWriter(tmp) as npz:  # the bytes np.savez writes
        npz.stream("maps", (len(rows), size, size), np.float16, batches())
        npz.write("index", rows)
        npz.write("target", targets)
    seconds = time.perf_counter() - t0
    method, layer = str(record["method"]), str(record["layer"])
    write_csv(out_table, pd.DataFrame({
        "position": np.arange(len(rows)), "index": rows, "target": targets, "explains": target,
        "empty": empty, "method": method, "implementation": "training_pass", "layer": layer,
        "seconds_total": seconds, "valid": valid, "covered_fraction": covered,
    }))
    log.info("%d maps (%s at %s) from the training pass in %.2f s; %d invalid, %d empty", len(rows), method, layer,
             seconds, int((~valid).sum()), int(empty.sum()))
