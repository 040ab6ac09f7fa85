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

from .atomic import atomic_path, write_csv
from .cams import auto_target_layer, build_cam, compute_maps
from .data import ArraySource, make_loader
from .models import load_checkpoint
from .prepare import load_prepared
from .runtime import select_runtime
from .timing import timed_stage

log = logging.getLogger(__name__)


@timed_stage
def compute_cams(settings: dict, images_path, index_path, weights, meta, selected_csv, out_cams, out_table,
                 device: str | None = None) -> None:
    """Compute a CAM for each row of ``selected_csv`` explaining its label (or prediction)."""
    proxy, mset = settings["proxy"], settings["model"]
    selected = pd.read_csv(selected_csv, keep_default_na=False)
    images, _ = load_prepared(images_path, index_path)
    size = images.shape[1]
    target_column = "label" if proxy["target"] == "label" else "prediction"
    targets = selected[target_column].to_numpy(dtype=np.int64) if len(selected) else np.zeros(0, np.int64)
    rows = selected["index"].to_numpy(dtype=np.int64) if len(selected) else np.zeros(0, np.int64)

    runtime = select_runtime("fp32", False, device)  # gradients of CAMs in full precision
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
        loader, _ = make_loader(ArraySource([(images, rows, targets)]), info["mean"], info["std"], mset["batch_size"])
        start = 0
        with cam:
            for x, classes in loader:
                batch = compute_maps(cam, model, runtime.to_device(x), classes.tolist())
                maps[start : start + len(batch)] = batch.astype(np.float16)
                start += len(batch)
    seconds = time.perf_counter() - t0
    log.info("%d maps with %s at %s in %.2f s", len(rows), name, layer, seconds)
    with atomic_path(out_cams) as tmp:
        np.savez(tmp, maps=maps, index=rows, target=targets)
    write_csv(out_table, pd.DataFrame({
        "position": np.arange(len(rows)), "index": rows, "target": targets,
        "method": proxy["cam_method"], "implementation": name, "layer": layer, "seconds_total": seconds,
    }))
