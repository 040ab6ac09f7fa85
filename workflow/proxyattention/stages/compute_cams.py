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

from ..files.artifacts import NpzWriter, empty_maps, load_prepared
from ..files.atomic import atomic_path, write_csv
from ..models.build import load_checkpoint
from ..models.cams import auto_target_layer, build_cam, explain, release
from ..runtime.device import select_runtime
from ..runtime.timing import images_done, startup_done, timed_stage

log = logging.getLogger(__name__)


def _empty(maps: np.ndarray, proxy: dict) -> np.ndarray:
    """Maps with nothing to erase: under the arm's threshold when the stage knows it (it does
    with explain_prediction, which explains those again), else the constant ones."""
    if "threshold" in proxy:
        from ..data.erasing import empty_masks

        return empty_masks(maps.astype(np.float32), proxy["threshold"])
    return empty_maps(maps)


CAM_CHUNK = 256  # maps made and written at a time (rounded to whole batches)


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
    empty = np.zeros(len(rows), dtype=bool)
    batch = mset["batch_size"]
    chunk = batch * max(1, CAM_CHUNK // batch)  # whole batches: each map as the unchunked pass makes it
    t0 = time.perf_counter()
    cam = build_cam(model, proxy["cam_method"], layer, size, proxy["fast_path"], batch) if len(rows) else None
    name = type(cam).__name__ if cam is not None else "none"
    startup_done()

    def chunks():
        """The maps, ``chunk`` rows at a time, each written before the next is made; ``targets``,
        ``explained`` and ``empty`` are filled as they go (written after the maps)."""
        redone = 0
        for start in range(0, len(rows), chunk):
            part = slice(start, start + chunk)
            maps = np.zeros((len(rows[part]), size, size), dtype=np.float16)
            explain(cam, model, runtime, images, rows[part], targets[part], info["mean"], info["std"], batch, maps)
            redo = np.flatnonzero(_empty(maps, proxy) & (targets[part] != predictions[part]))
            if proxy["empty_maps"] == "explain_prediction" and len(redo):
                again = np.zeros((len(redo), size, size), dtype=np.float16)
                explain(cam, model, runtime, images, rows[part][redo], predictions[part][redo], info["mean"],
                        info["std"], batch, again)
                maps[redo] = again
                targets[start + redo], explained[start + redo] = predictions[start + redo], "prediction"
                redone += len(redo)
            empty[part] = _empty(maps, proxy)
            yield maps
        if redone:
            log.info("%d empty maps of the %s explained again for the predicted class", redone, target_column)

    try:  # np.savez's bytes, the maps streamed: memory holds one chunk of maps, not all of them
        with atomic_path(out_cams) as tmp, NpzWriter(tmp) as npz:
            npz.stream("maps", (len(rows), size, size), np.float16, chunks())
            npz.write("index", rows)
            npz.write("target", targets)
    finally:
        if cam is not None:
            release(cam)
    images_done()
    seconds = time.perf_counter() - t0
    where = ("every layer with a bias (FullGrad uses no target layer)" if proxy["cam_method"] == "fullgrad"
             else layer)  # pytorch-grad-cam's own warning says so too
    log.info("%d maps with %s at %s in %.2f s; %d empty", len(rows), name, where, seconds, int(empty.sum()))
    if len(rows) and empty.mean() > 0.5:
        log.warning("%d of %d maps are empty (constant): nothing to erase in them (proxy.empty_maps: %s). "
                    "A target layer whose map is tiny at this image size, or explaining the true class of wrong "
                    "predictions, does this; see target_layer, proxy.target and proxy.empty_maps",
                    int(empty.sum()), len(rows), proxy["empty_maps"])
    write_csv(out_table, pd.DataFrame({
        "position": np.arange(len(rows)), "index": rows, "target": targets, "explains": explained,
        "empty": empty, "method": proxy["cam_method"], "implementation": name, "layer": layer,
        "seconds_total": seconds,
    }))
