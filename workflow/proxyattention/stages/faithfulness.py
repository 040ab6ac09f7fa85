"""Stage ``faithfulness``: were this arm's maps more important to the model than the same shape
at a random place? (analysis/faithfulness.py says how each number is made.)

For one proxy-kind arm and cycle, on a seeded sample of the images its maps explain (constant
maps left out and counted), with the checkpoint that made the maps (the previous cycle's), in
eval mode:

- ROAD most- and least-relevant-first at each percentile, and combined, for the arm's own maps,
  the same maps moved by its random_erase control's offsets (where the control recorded one for
  the image, else drawn from a stream of this stage), and the same method's maps from the model
  with its head and last stage re-initialised (with their rank correlation to the own maps);
- the direct check of what the arm added: the drop in the true class's probability from the
  original to the arm's own added image (``erased.npz``), and to the same fill at the moved
  placement of the same mask.

Outputs: ``faithfulness.npz`` (per image) and ``faithfulness.json`` (means, mean curves,
counts, cost), beside the arm's maps. Only aggregate and the figures read them.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import pandas as pd
import torch

from ..analysis import faithfulness as fa
from ..data.batches import ArraySource, make_loader
from ..data.erasing import erase, random_place_levels, threshold_masks
from ..data.streams import FAITHFULNESS, generator
from ..files.artifacts import cams_memmap, load_prepared, npz_array
from ..files.atomic import atomic_path, write_json
from ..models.build import load_checkpoint
from ..models.cams import auto_target_layer, build_cam, compute_maps, release
from ..models.inference import predict_logits, softmax
from ..runtime.device import select_runtime
from ..runtime.timing import startup_done, timed_stage

log = logging.getLogger(__name__)


def control_offsets(control_csv, rows: np.ndarray) -> np.ndarray:
    """(dy, dx) per row from a random_erase control's ``erased.csv`` (-1 where it has none)."""
    out = np.full((len(rows), 2), -1, np.int64)
    if control_csv is None:
        return out
    table = pd.read_csv(control_csv)
    if not {"offset_y", "offset_x"} <= set(table.columns):
        return out
    known = table.set_index("index")[["offset_y", "offset_x"]]
    for i, row in enumerate(rows):
        if row in known.index:
            out[i] = known.loc[row].to_numpy(dtype=np.int64).reshape(-1, 2)[0]
    return out


def _inputs(images, rows, labels, info, batch_size, runtime) -> torch.Tensor:
    loader, _ = make_loader(ArraySource([(images, rows, labels)]), info["mean"], info["std"], batch_size,
                            device=runtime.device)
    parts = [x for x, _ in loader]
    return torch.cat(parts) if parts else torch.zeros(0)


def _p_true(model, images, labels, info, batch_size, runtime) -> np.ndarray:
    logits = predict_logits(model, ArraySource([(images, np.arange(len(images)), labels)]), info["mean"],
                            info["std"], batch_size, runtime)
    return softmax(logits.astype(np.float64))[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)


@timed_stage
def faithfulness(settings: dict, images_path, index_path, weights, meta, cams_path, erased_npz, out_npz, out_json,
                 *, control_csv=None, seed=0, cycle: int = 1, device: str | None = None) -> None:
    """Score the maps of ``cams_path`` (the arm's cycle) and write ``out_npz`` and ``out_json``."""
    start = time.perf_counter()
    spec, proxy, mset = settings["faithfulness"], settings["proxy"], settings["model"]
    percentiles = tuple(spec["percentiles"])
    images, index = load_prepared(images_path, index_path)
    size = images.shape[1]
    maps, rows, targets = cams_memmap(cams_path)  # memory-mapped: only the sampled maps are read whole
    labels_of = index.set_index("index")["label"]
    # a training-pass map's uncovered pixels (NaN) count as its lowest level: least relevant in ROAD
    constant = np.concatenate([fa.constant_maps(np.nan_to_num(np.asarray(maps[s:s + 256], np.float32), nan=0.0))
                               for s in range(0, len(maps), 256)]) \
        if len(maps) else np.zeros(0, bool)
    candidates = np.flatnonzero(~constant)
    rng = generator((seed, cycle), FAITHFULNESS)
    chosen = np.sort(rng.choice(candidates, size=min(spec["sample"], len(candidates)), replace=False)) \
        if len(candidates) else np.zeros(0, np.int64)
    sample_rows, sample_targets = rows[chosen], targets[chosen].astype(np.int64)
    sample_labels = labels_of.loc[sample_rows].to_numpy(dtype=np.int64) if len(chosen) else np.zeros(0, np.int64)
    own = np.nan_to_num(maps[chosen].astype(np.float32), nan=0.0)
    offsets = control_offsets(control_csv, sample_rows)
    from_control = (offsets >= 0).all(1)
    drawn = fa.draw_offsets(len(chosen), size, size, generator((seed, cycle), FAITHFULNESS, 1))
    offsets = np.where(from_control[:, None], offsets, drawn)
    moved = fa.moved_maps(own, offsets)

    runtime = select_runtime("fp32", False, device, settings["training"]["deterministic"])
    model, info = load_checkpoint(weights, meta)
    model = runtime.prepare_model(model).eval()
    startup_done()
    layer = mset["target_layer"] if mset["target_layer"] != "auto" else auto_target_layer(model, size)
    batch = mset["batch_size"]
    result = {"index": sample_rows, "target": sample_targets, "label": sample_labels, "offsets": offsets,
              "offset_from_control": from_control, "percentiles": np.asarray(percentiles, np.int64)}
    randomised = copy.deepcopy(model)
    modules = fa.randomise_top(randomised, seed * 100 + cycle)
    random_maps = np.zeros_like(own)
    if len(chosen):
        inputs = _inputs(images, sample_rows, sample_targets, info, batch, runtime)
        cam = build_cam(randomised, proxy["cam_method"], layer, size, proxy["fast_path"], batch)
        try:
            for s in range(0, len(chosen), batch):
                random_maps[s:s + batch] = compute_maps(cam, randomised, inputs[s:s + batch],
                                                        sample_targets[s:s + batch].tolist())
        finally:
            release(cam)
        tie_rng = generator((seed, cycle), FAITHFULNESS, 2)
        kinds = {"own": own, "moved": moved, "random_model": random_maps}
        for k, (name, kind_maps) in enumerate(kinds.items()):
            ranks = fa.tie_broken_ranks(kind_maps, tie_rng)
            curves = [fa.road_curves(model, inputs[s:s + batch], ranks[s:s + batch], sample_targets[s:s + batch],
                                     seed * 10 + k, percentiles) for s in range(0, len(chosen), batch)]
            for part in ("morf", "lerf", "combined"):
                result[f"{name}_{part}"] = np.concatenate([c[part] for c in curves])
            result[f"{name}_removed_morf"] = np.array([[fa.removed_share(r, p, True) for p in percentiles]
                                                       for r in ranks], np.float32)
        result["random_model_empty"] = fa.constant_maps(random_maps)
        result["random_model_rank_corr"] = fa.spearman(own, random_maps)
        # the direct check: what the arm's fill at its own mask does, against the same fill moved
        added_images, added_rows = npz_array(erased_npz, "images"), npz_array(erased_npz, "index")  # memory-mapped
        position = {int(r): i for i, r in enumerate(added_rows)}
        where = np.array([position.get(int(r), -1) for r in sample_rows])
        kept = np.flatnonzero(where >= 0)
        originals = np.asarray(images[sample_rows[kept]])
        masks, _ = threshold_masks(own[kept], proxy["threshold"]["mode"], proxy["threshold"]["value"])
        moved_masks = np.stack([np.roll(m, tuple(o), axis=(0, 1)) for m, o in zip(masks, offsets[kept])]) \
            if len(kept) else masks
        fill_rng = generator((seed, cycle), FAITHFULNESS, 3)
        moved_images = erase(originals, random_place_levels(own[kept], masks, moved_masks), moved_masks,
                             proxy["fill"], fill_rng)
        p = {name: np.full(len(chosen), np.nan) for name in ("p_true_original", "p_true_own_fill", "p_true_moved_fill")}
        for name, shown in (("p_true_original", originals), ("p_true_own_fill", np.asarray(added_images[where[kept]])),
                            ("p_true_moved_fill", moved_images)):
            p[name][kept] = _p_true(model, shown, sample_labels[kept], info, batch, runtime)
        result.update(p)
    seconds = time.perf_counter() - start
    with atomic_path(out_npz) as tmp:
        np.savez(tmp, **result)
    means = {"n_maps": int(len(maps)), "n_constant_maps": int(constant.sum()), "n_sample": int(len(chosen)),
             "n_offsets_from_control": int(from_control.sum()), "layer": layer, "method": proxy["cam_method"],
             "randomised_modules": modules, "percentiles": list(percentiles), "seconds": seconds}
    for name in fa.KINDS:
        key = f"{name}_morf"
        have = len(chosen) and key in result
        means[f"road_morf_{name}"] = float(result[key].mean()) if have else None
        means[f"road_lerf_{name}"] = float(result[f"{name}_lerf"].mean()) if have else None
        means[f"road_combined_{name}"] = float(result[f"{name}_combined"].mean()) if have else None
        means[f"curve_morf_{name}"] = result[key].mean(0).tolist() if have else []
        means[f"removed_morf_{name}"] = result[f"{name}_removed_morf"].mean(0).tolist() if have else []
    corr = result.get("random_model_rank_corr", np.zeros(0))
    means["random_model_rank_corr"] = float(np.nanmean(corr)) if np.isfinite(corr).any() else None
    for name in ("own_fill", "moved_fill"):
        drop = result.get("p_true_original", np.zeros(0)) - result.get(f"p_true_{name}", np.zeros(0))
        means[f"fill_drop_{name.split('_')[0]}"] = float(np.nanmean(drop)) if np.isfinite(drop).any() else None
    write_json(out_json, means)
    log.info("faithfulness of %d of %d maps (%d constant) at %s in %.1f s: ROAD combined own %s, moved %s, "
             "randomised model %s", len(chosen), len(maps), int(constant.sum()), layer, seconds,
             means["road_combined_own"], means["road_combined_moved"], means["road_combined_random_model"])
