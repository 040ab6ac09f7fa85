"""Stage ``compute_cams``: one map per selected training image, saved as float16.

``cams.npz`` holds ``maps`` (N, S, S) float16 in [0, 1] at the prepared image
size, ``index`` (rows of the prepared arrays) and ``target`` (the explained
class); ``cams.csv`` is the same table for people, with the method and layer.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from ..files.artifacts import empty_maps, load_prepared
from ..files.atomic import atomic_path, write_csv
from ..models.build import load_checkpoint
from ..models.cams import auto_target_layer, build_cam, explain, release
from ..runtime.device import select_runtime
from ..runtime.timing import timed_stage

log = logging.getLogger(__name__)


def _empty(maps: np.ndarray, proxy: dict) -> np.ndarray:
    """Maps with nothing to erase: under the arm's threshold when the stage knows it (it does
    with explain_prediction, which explains those again), else the constant ones."""
    if "threshold" in proxy:
        from ..data.erasing import empty_masks

        return empty_masks(maps.astype(np.float32), proxy["threshold"])
    return empty_maps(maps)


@timed_stage
def compute_cams(settings: dict, images_path, index_path, weights, meta, selected_csv, out_cams, out_table,
                 device: str | None = None) -> None:
    """Compute a CAM for each row of ``selected_csv`` explaining its label (or prediction).

    ``proxy.empty_maps: explain_prediction`` explains the predicted class where the label's
    map is empty. ``cams.csv`` says which class each map explains and whether it is empty.
    """
    proxy, mset = settings["proxy"], settings["model"]
    selected = pd.read_csv(selected_csv, keep_default_na=False)
    images, _ = load_prepared(images_path, index_path)
    size = images.shape[1]
    target_column = "label" if proxy["target"] == "label" else "prediction"
    targets = selected[target_column].to_numpy(dtype=np.int64, copy=True) if len(selected) else np.zeros(0, np.int64)
    predictions = selected["prediction"].to_numpy(dtype=np.int64) if len(selected) else np.zeros(0, np.int64)
    rows = selected["index"].to_numpy(dtype=np.int64) if len(selected) else np.zeros(0, np.int64)
    explained = np.full(len(rows), target_column, dtype=object)

    # gradients of CAMs in full (IEEE) precision; deterministic kernels when the config asks for them
    runtime = select_runtime("fp32", False, device, settings["training"]["deterministic"])
    model, info = load_checkpoint(weights, meta)
    model = runtime.prepare_model(model).eval()
    layer = mset["target_layer"]
    if layer == "auto":
        layer = auto_target_layer(model, size)
    maps = np.zeros((len(rows), size, size), dtype=np.float16)
    t0 = time.perf_counter()
    name = "none"
    if len(rows):
        cam = build_cam(model, proxy["cam_method"], layer, size, proxy["fast_path"], mset["batch_size"])
        name = type(cam).__name__
        try:
            explain(cam, model, runtime, images, rows, targets, info["mean"], info["std"], mset["batch_size"], maps)
            redo = np.flatnonzero(_empty(maps, proxy) & (targets != predictions))
            if proxy["empty_maps"] == "explain_prediction" and len(redo):
                again = np.zeros((len(redo), size, size), dtype=np.float16)
                explain(cam, model, runtime, images, rows[redo], predictions[redo], info["mean"], info["std"],
                        mset["batch_size"], again)
                maps[redo], targets[redo], explained[redo] = again, predictions[redo], "prediction"
                log.info("%d empty maps of the %s explained again for the predicted class", len(redo), target_column)
        finally:
            release(cam)
    seconds = time.perf_counter() - t0
    empty = _empty(maps, proxy)
    log.info("%d maps with %s at %s in %.2f s; %d empty", len(rows), name, layer, seconds, int(empty.sum()))
    if len(rows) and empty.mean() > 0.5:
        log.warning("%d of %d maps are empty (constant): nothing to erase in them (proxy.empty_maps: %s). "
                    "A target layer whose map is tiny at this image size, or explaining the true class of wrong "
                    "predictions, does this; see target_layer, proxy.target and proxy.empty_maps",
                    int(empty.sum()), len(rows), proxy["empty_maps"])
    with atomic_path(out_cams) as tmp:
        np.savez(tmp, maps=maps, index=rows, target=targets)
    write_csv(out_table, pd.DataFrame({
        "position": np.arange(len(rows)), "index": rows, "target": targets, "explains": explained,
        "empty": empty, "method": proxy["cam_method"], "implementation": name, "layer": layer,
        "seconds_total": seconds,
    }))
