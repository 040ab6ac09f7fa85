"""Stage ``agreement``: how far a training-pass arm's selection and maps differ from what the
separate passes would have given, measured with the same checkpoint (the one that recorded).

Outside the arm's cost: the separate passes it repeats here are the work the arm does not pay.
For the arm's cycle n it reads cycle n-1's checkpoint and record, and the arm's cycle-n
``selected.csv`` and ``cams.npz``:

- selection: find_misclassified's pass over every training image in eval mode, its rule applied
  before the caps (``jaccard_rule``: the two sets of images the rule picks) and with the caps as
  the arm applies them (``jaccard_selected``; the separate pass orders by loss, the arm by its
  ``selection.order``);
- maps (arms whose maps come from the record): on at most ``sample`` of the selected images with a
  map, the arm's method in eval mode on the un-augmented image (``gradcam_loss``: Grad-CAM of
  log p(class); ``cam``: the pooled layer's CAM), against the recorded map brought back to the
  image, over the pixels the view covered: IoU of the top-10% masks and Spearman's rank correlation.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pandas as pd

from ..data.batches import ArraySource
from ..data.erasing import threshold_masks
from ..data.streams import AGREEMENT, generator
from ..data.splits import restrict_to_size
from ..files.artifacts import cams_memmap, empty_maps, load_prepared
from ..files.atomic import write_json
from ..models.build import load_checkpoint
from ..models.cams import auto_target_layer, build_cam, explain, release
from ..models.inference import predict_logits
from ..runtime.device import select_runtime
from ..runtime.timing import startup_done, timed_stage
from .find_misclassified import prediction_table, select
from .from_record import SELECTION_KEYS, load_record, record_table

log = logging.getLogger(__name__)


def jaccard(a, b) -> float:
    """|a & b| / |a | b| of two sets of image rows (1 for two empty sets)."""
    a, b = set(map(int, a)), set(map(int, b))
    return 1.0 if not (a | b) else len(a & b) / len(a | b)


def top_iou(recorded: np.ndarray, separate: np.ndarray, value: float = 0.9) -> np.ndarray:
    """Per image: IoU of the top (1 - value) of the pixels of the two maps, both over the pixels
    the recorded map covers (NaN elsewhere)."""
    covered = ~np.isnan(recorded)
    a, _ = threshold_masks(recorded, "topk_area", value)
    b, _ = threshold_masks(np.where(covered, separate, np.nan).astype(np.float32), "topk_area", value)
    inter, union = (a & b).sum(axis=(1, 2)), (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def rank_correlation(recorded: np.ndarray, separate: np.ndarray) -> np.ndarray:
    """Per image: Spearman's correlation of the two maps over the covered pixels (NaN for a constant map)."""
    from scipy.stats import spearmanr

    out = np.full(len(recorded), np.nan)
    for i, (r, s) in enumerate(zip(recorded, separate)):
        covered = ~np.isnan(r)
        if covered.sum() > 2 and np.ptp(r[covered]) > 0 and np.ptp(s[covered]) > 0:
            out[i] = spearmanr(r[covered], s[covered]).statistic
    return out


def _mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


@timed_stage
def agreement(settings: dict, images_path, index_path, weights, meta, record_path, selected_csv, cams_path, out_json,
              *, seed: int = 0, cycle: int = 1, run: bool = True, maps_from_record: bool = True,
              device: str | None = None) -> None:
    """Write ``out_json`` with the selection's and the maps' agreement (module docstring)."""
    start = time.perf_counter()
    spec, proxy, mset = settings["agreement"], settings["proxy"], settings["model"]
    if not run:
        write_json(out_json, {"ran": False, "reason": "the stop rule held before this cycle"})
        return
    images, index = load_prepared(images_path, index_path)
    index = restrict_to_size(index, settings.get("train_size"), str(index_path))
    size = images.shape[1]
    train = index[index.split == "train"].reset_index(drop=True)
    runtime = select_runtime(settings["training"]["precision"], settings["training"]["channels_last"], device,
                             settings["training"]["deterministic"])
    model, info = load_checkpoint(weights, meta)
    model = runtime.prepare_model(model).eval()
    startup_done()
    source = ArraySource([(images, train["index"].to_numpy(), train["label"].to_numpy())])
    separate = prediction_table(predict_logits(model, source, info["mean"], info["std"], mset["batch_size"], runtime),
                                train)
    recorded = record_table(load_record(record_path, SELECTION_KEYS), index)
    recorded = recorded[recorded.met >= 0]
    sel = proxy["selection"]
    rule = (sel["rule"], sel["confidence_below"])
    separate_rule = select(separate, *rule)
    recorded_rule = select(recorded, *rule)
    separate_capped = select(separate, *rule, sel["max_count"], sel["max_fraction"])
    chosen = pd.read_csv(selected_csv, keep_default_na=False)
    out = {
        "ran": True, "checkpoint_cycle": cycle - 1,
        "n_met": int(len(recorded)), "n_train": int(len(train)),
        "n_rule_record": int(len(recorded_rule)), "n_rule_separate": int(len(separate_rule)),
        "jaccard_rule": jaccard(recorded_rule["index"], separate_rule["index"]),
        "n_selected_record": int(len(chosen)), "n_selected_separate": int(len(separate_capped)),
        "jaccard_selected": jaccard(chosen["index"], separate_capped["index"]),
        "prediction_agreement": float((recorded.set_index("index").prediction
                                       == separate.set_index("index").loc[recorded["index"], "prediction"]).mean())
        if len(recorded) else math.nan,
    }
    if maps_from_record:
        maps, rows, targets = cams_memmap(cams_path)
        usable = np.flatnonzero(~np.concatenate([empty_maps(np.asarray(maps[s:s + 256], np.float32))
                                                 for s in range(0, len(maps), 256)])) if len(maps) else np.zeros(0, int)
        rng = generator((seed, cycle), AGREEMENT)
        sample = np.sort(rng.choice(usable, size=min(spec["sample"], len(usable)), replace=False)) \
            if len(usable) else np.zeros(0, np.int64)
        mine = np.asarray(maps[sample], dtype=np.float32)
        theirs = np.zeros((len(sample), size, size), dtype=np.float16)
        layer = mset["target_layer"] if mset["target_layer"] != "auto" else auto_target_layer(model, size)
        if len(sample):
            cam_runtime = select_runtime("fp32", False, device, settings["training"]["deterministic"])
            model = cam_runtime.prepare_model(model).eval()
            cam = build_cam(model, proxy["cam_method"], layer, size, proxy["fast_path"], mset["batch_size"])
            try:
                explain(cam, model, cam_runtime, images, rows[sample], targets[sample].astype(np.int64),
                        info["mean"], info["std"], mset["batch_size"], theirs)
            finally:
                release(cam)
        theirs = theirs.astype(np.float32)
        iou, rho = top_iou(mine, theirs), rank_correlation(mine, theirs)
        out.update({"n_maps": int(len(sample)), "map_method": proxy["cam_method"], "map_layer": layer,
                    "map_iou_top10": _mean(iou), "map_spearman": _mean(rho),
                    "map_iou_top10_median": float(np.nanmedian(iou)) if np.isfinite(iou).any() else math.nan,
                    "covered_fraction": _mean((~np.isnan(mine)).reshape(len(mine), -1).mean(1))
                    if len(mine) else math.nan})
    out["seconds"] = time.perf_counter() - start
    write_json(out_json, out)
    log.info("agreement with the separate passes: selection Jaccard %.3f before the caps, %.3f after; maps: %s",
             out["jaccard_rule"], out["jaccard_selected"],
             f"IoU {out['map_iou_top10']:.3f}, Spearman {out['map_spearman']:.3f} on {out['n_maps']}"
             if maps_from_record else "separate pass (not compared)")


SUMMARY_KEYS = ("jaccard_rule", "jaccard_selected", "prediction_agreement", "map_iou_top10", "map_spearman",
                "n_maps")


def summary_columns(measured: dict) -> dict:
    """The agreement's columns of a summary row (``agree_``-prefixed; NaN where not measured)."""
    return {f"agree_{k}": measured.get(k, math.nan) for k in SUMMARY_KEYS}
