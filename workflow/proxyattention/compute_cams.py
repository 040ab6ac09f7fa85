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
import torch

from .artifacts import empty_maps
from .atomic import atomic_path, write_csv
from .cams import CamError, auto_target_layer, build_cam, compute_maps
from .data import ArraySource, make_loader
from .models import load_checkpoint
from .prepare import load_prepared
from .runtime import select_runtime
from .timing import timed_stage

log = logging.getLogger(__name__)


def release(cam) -> None:
    """Remove the library's hooks: what ``with cam:`` does on exit, without its ``__exit__``,
    which prints and swallows an IndexError raised inside the block."""
    hooks = getattr(cam, "activations_and_grads", None)
    if hooks is not None:
        hooks.release()


def explain(cam, model, runtime, images, rows: np.ndarray, classes: np.ndarray, mean, std, batch_size: int,
            out: np.ndarray) -> None:
    """Write the float16 map of each (row, class) into ``out``; every row gets its map or this raises."""
    loader, _ = make_loader(ArraySource([(images, rows, classes)]), mean, std, batch_size, device=runtime.device,
                            channels_last=runtime.channels_last)
    start = 0
    batches = iter(loader)
    while True:
        try:  # data loading outside the library's code: its errors surface as they are
            x, targets = next(batches)  # moved to the device here
        except StopIteration:
            break
        except torch.cuda.OutOfMemoryError:
            raise CamError(f"CUDA out of memory moving a batch of {batch_size} images to the device; lower "
                           "models.<name>.batch_size in the config") from None
        batch = compute_maps(cam, model, x, targets.tolist())
        out[start : start + len(batch)] = batch.astype(np.float16)
        start += len(batch)
    if start != len(rows):
        raise CamError(f"computed {start} maps for {len(rows)} selected images; no map may be left out")


def _empty(maps: np.ndarray, proxy: dict) -> np.ndarray:
    """Maps with nothing to erase: under the arm's threshold when the stage knows it (it does
    with explain_prediction, which explains those again), else the constant ones."""
    if "threshold" in proxy:
        from .masking import empty_masks

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
