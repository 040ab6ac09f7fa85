"""Do the maps point at what the model uses? Faithfulness of a CAM, measured with
pytorch-grad-cam's ROAD metrics (Rong et al., ICML 2022: remove pixels in the map's order and
fill them by noisy linear imputation, so the removal pattern itself leaks no class).

Three kinds of map are scored with the trained model that made them, each on the same images:

- ``own``: the arm's maps;
- ``moved``: the same maps shifted cyclically by random_erase's offset (its ``cam_shape``
  control: the same shape at a random place; a cyclic shift moves no pixel in from outside);
- ``random_model``: the same CAM method's maps from the model with its head and last stage
  re-initialised under a seeded stream (Adebayo et al. 2018's sanity check), with their rank
  correlation to ``own``.

Two traps of the library are handled here (see ``tie_broken_ranks`` and ``road_curves``): it
removes every pixel tied at a percentile's threshold, and its imputer draws noise from torch's
global generator.
"""

from __future__ import annotations

import numpy as np
import torch

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # the library's defaults
KINDS = ("own", "moved", "random_model")
# Re-initialised for the sanity check, per family (first whose modules all exist): the head and
# the last stage.
TOP_MODULES = (
    ("fc", "layer4"),                                   # torchvision-style ResNets (timm's resnet*)
    ("classifier", "conv_head", "bn2", "blocks.-1"),    # timm EfficientNets / MobileNets
    ("head", "norm", "blocks.-1"),                      # timm ViTs
)


def constant_maps(maps: np.ndarray) -> np.ndarray:
    """True for each map (N, H, W) with one value everywhere: it ranks no pixel above another."""
    if not len(maps):
        return np.zeros(0, bool)
    flat = np.asarray(maps, np.float32).reshape(len(maps), -1)
    return (flat == flat[:, :1]).all(1)


def tie_broken_ranks(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each map (N, H, W) replaced by its pixels' ranks 0 .. H*W-1 (float32, exact), highest
    value highest rank; pixels of equal value are ordered by a seeded random key. ROAD
    thresholds a map at a percentile and removes every pixel tied at it: a ReLU'd map with a zero
    plateau would lose far more than the share asked, and an empty map all of it."""
    n = len(maps)
    flat = np.asarray(maps, np.float32).reshape(n, -1)
    ranks = np.empty(flat.shape, np.float32)
    for i in range(n):
        order = np.lexsort((rng.random(flat.shape[1]), flat[i]))  # by value, ties by the random key
        ranks[i, order] = np.arange(flat.shape[1], dtype=np.float32)
    return ranks.reshape(np.shape(maps))


def moved_maps(maps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each map shifted cyclically by its (dy, dx) offset, as random_erase's cam_shape moves a mask."""
    return np.stack([np.roll(m, (int(dy), int(dx)), axis=(0, 1)) for m, (dy, dx) in zip(maps, offsets)]) \
        if len(maps) else np.zeros_like(maps)


def draw_offsets(n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(dy, dx) per map, drawn as random_masks draws a cam_shape control's (y from h, then x from w)."""
    out = np.zeros((n, 2), np.int64)
    for i in range(n):
        out[i] = rng.integers(h), rng.integers(w)
    return out


def removed_share(ranks: np.ndarray, percentile: float, most_relevant: bool) -> float:
    """The share of a map's pixels ROAD removes at ``percentile`` (as the library thresholds)."""
    values = ranks.reshape(-1) if most_relevant else 1 - ranks.reshape(-1)
    threshold = np.percentile(values, percentile)
    return float((values >= threshold).mean())


def road_curves(model: torch.nn.Module, inputs: torch.Tensor, ranks: np.ndarray, classes, seed: int,
                percentiles=PERCENTILES) -> dict:
    """ROAD most- and least-relevant-first at each percentile, per image: the change of the
    softmax probability of ``classes`` (the map's own target) after removal and imputation
    (negative: confidence fell). ``inputs``: the normalised images (B, 3, H, W) on the model's
    device; ``ranks``: tie-broken maps at the input's resolution. The imputer's noise comes from
    torch's global generator, seeded here before every call from ``seed``. ``combined`` is the
    library's ROADCombined: (mean LeRF - mean MoRF) / 2 (higher: more faithful)."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    model.eval()
    out = {}
    for name, metric, code in (("morf", ROADMostRelevantFirst, 0), ("lerf", ROADLeastRelevantFirst, 1)):
        columns = []
        for p in percentiles:
            torch.manual_seed(int(seed) * 1000 + code * 100 + int(p))
            columns.append(np.asarray(metric(p)(inputs, ranks, targets, model), np.float32))
        out[name] = np.stack(columns, 1)  # (B, P)
    out["combined"] = (out["lerf"].mean(1) - out["morf"].mean(1)) / 2
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rank correlation of each pair of maps (N, H, W), ties by average rank; NaN for a constant one."""
    from scipy.stats import spearmanr

    out = np.full(len(a), np.nan)
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
        if x.std() > 0 and y.std() > 0:
            out[i] = spearmanr(x, y).statistic
    return out


def top_modules(model: torch.nn.Module) -> list[str]:
    """The head and last stage of ``model`` that the sanity check re-initialises."""
    names = dict(model.named_modules())
    for family in TOP_MODULES:
        resolved = []
        for name in family:
            if name.endswith(".-1"):
                parent = names.get(name[:-3])
                name = f"{name[:-3]}.{len(parent) - 1}" if isinstance(parent, torch.nn.Sequential) and len(parent) else ""
            resolved.append(name)
        if all(n in names for n in resolved):
            return resolved
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    found = [n for n, m in names.items() if m is head and n]
    if not found:
        raise ValueError(f"{type(model).__name__}: no head or last stage known to re-initialise (TOP_MODULES)")
    return found


def randomise_top(model: torch.nn.Module, seed: int) -> list[str]:
    """Re-initialise the head and last stage of ``model`` in place (every submodule's own
    ``reset_parameters``, BatchNorm's running statistics included) under a seeded torch stream
    that leaves the global one as it was; returns the modules' names."""
    names = top_modules(model)
    modules = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for name in names:
            for sub in modules[name].modules():
                if hasattr(sub, "reset_running_stats"):
                    sub.reset_running_stats()
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
    return names


# summary.csv's faithfulness columns (aggregate): means per arm, seed and cycle, and each kind's
# mean most-relevant-first curve (road_morf_<kind>_p<percentile>).
SUMMARY_KEYS = ("road_morf_own", "road_morf_moved", "road_morf_random_model", "road_lerf_own", "road_lerf_moved",
                "road_lerf_random_model", "road_combined_own", "road_combined_moved", "road_combined_random_model",
                "random_model_rank_corr", "fill_drop_own", "fill_drop_moved")
COUNT_KEYS = {"n_faithfulness": "n_sample", "n_faithfulness_constant": "n_constant_maps",
              "n_faithfulness_offsets_from_control": "n_offsets_from_control",
              "faithfulness_seconds": "seconds", "faithfulness_layer": "layer"}


def summary_columns(measured: dict) -> dict:
    """One summary row's faithfulness columns from a ``faithfulness.json``."""
    row = {k: (np.nan if measured.get(k) is None else measured[k]) for k in SUMMARY_KEYS}
    row.update({column: measured.get(key) for column, key in COUNT_KEYS.items()})
    for kind in KINDS:
        for p, value in zip(measured.get("percentiles", []), measured.get(f"curve_morf_{kind}", [])):
            row[f"road_morf_{kind}_p{p}"] = value
    return row
