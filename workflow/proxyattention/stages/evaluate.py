"""Stage ``evaluate``: validation metrics of one checkpoint, with its training cost.

Metrics come from the confusion matrix (rows: true class, columns: predicted),
with scikit-learn's conventions: a class never predicted has precision 0, a
class absent from validation is left out of the macro averages.
"""

from __future__ import annotations

import numpy as np

from ..data.splits import split_source, validation_source
from ..files.artifacts import load_prepared
from ..files.atomic import atomic_path, read_json, write_json
from ..models.build import load_checkpoint
from ..models.inference import cross_entropy
from ..runtime.device import select_runtime
from ..runtime.timing import images_done, startup_done, timed_stage


def classification_metrics(logits: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """Accuracy, balanced accuracy, macro and per-class precision/recall/F1, top-5, loss, confusion."""
    pred = logits.argmax(1)
    cm = np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    top5 = (np.argsort(-logits, axis=1, kind="stable")[:, :5] == labels[:, None]).any(1) if n_classes > 5 else None
    return metrics_from(cm, cross_entropy(logits, labels), top5)


def metrics_from(cm: np.ndarray, losses: np.ndarray, top5_hits: np.ndarray | None) -> dict:
    """classification_metrics from its parts: the confusion matrix (true x predicted), each image's
    cross-entropy and top-5 hit (None with 5 classes or fewer)."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)  # sklearn's macro average uses the labels that occur
    out = {
        "n_val": int(cm.sum()),
        "accuracy": float(tp.sum() / cm.sum()) if cm.sum() else float("nan"),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "val_loss": float(losses.mean()),
        "precision_per_class": precision.tolist(),
        "recall_per_class": recall.tolist(),
        "f1_per_class": f1.tolist(),
        "support_per_class": support.tolist(),
        "confusion_matrix": cm.tolist(),
    }
    if top5_hits is not None:
        out["top5_accuracy"] = float(top5_hits.mean())
    return out


EVAL_CHUNK = 1024  # images whose logits are held at once (a whole number of batches)


def scored(model, source, info: dict, batch_size: int, runtime) -> tuple[dict, dict, dict]:
    """(classification_metrics, per_image, what question 2 reads) of every image of ``source``,
    built a chunk of logits at a time (models/inference.py logits_in_chunks): the same numbers as
    from all logits at once, without the N x K logits (or their float64 probabilities) in memory.
    Question 2 gets each image's float64 top probability, Brier term and predicted class (from the
    logits, as the metrics)."""
    from ..analysis.attention_measures import brier_terms
    from ..models.inference import logits_in_chunks, softmax

    k = len(info["classes"])
    labels = source.labels
    cm = np.zeros(k * k, dtype=np.int64)
    parts = {key: [] for key in ("loss", "top5", "prediction", "p_true", "p_top", "brier", "argmax")}
    start = 0
    for logits in logits_in_chunks(model, source, info["mean"], info["std"], batch_size, runtime, EVAL_CHUNK):
        y = labels[start:start + len(logits)]
        start += len(logits)
        argmax = logits.argmax(1)
        cm += np.bincount(y * k + argmax, minlength=k * k)
        parts["argmax"].append(argmax)
        parts["loss"].append(cross_entropy(logits, y))
        if k > 5:
            parts["top5"].append((np.argsort(-logits, axis=1, kind="stable")[:, :5] == y[:, None]).any(1))
        probs = softmax(logits.astype(np.float64))
        parts["prediction"].append(probs.argmax(1))
        parts["p_true"].append(probs[np.arange(len(y)), y])
        parts["p_top"].append(probs.max(1))
        parts["brier"].append(brier_terms(probs, y))
    whole = {key: np.concatenate(value) if value else np.zeros(0) for key, value in parts.items()}
    metrics = metrics_from(cm.reshape(k, k), whole["loss"], whole["top5"] if k > 5 else None)
    rows = np.concatenate([rows for _, rows, _ in source.parts]) if len(labels) else np.zeros(0, np.int64)
    images = {"index": rows.astype(np.int64), "label": labels.astype(np.int64),
              "prediction": whole["prediction"].astype(np.int64), "p_true": whole["p_true"].astype(np.float32),
              "p_top": whole["p_top"].astype(np.float32), "brier": whole["brier"].astype(np.float32)}
    question2 = {"p_top": whole["p_top"], "prediction": whole["prediction"].astype(np.int64),
                 "brier": whole["brier"], "argmax": whole["argmax"].astype(np.int64)}
    return metrics, images, question2


MAP_CHUNK = 128  # maps of the question-2 sample made and measured at a time (rounded to whole batches)


def calibration(scores: dict, labels: np.ndarray, split: str) -> dict:
    """Calibration on the verdicts' split, from the evaluation's own float64 scores (scored's third
    part): expected calibration error, mean Brier score, the number of images. Computed in every
    evaluation (it costs nothing beside the pass); the measure stage reports it when
    ``evaluation.calibration`` is on."""
    from ..analysis import attention_measures as am

    return {"split": split, "ece": am.expected_calibration_error(scores["p_top"], scores["prediction"] == labels),
            "brier": float(scores["brier"].mean()) if len(labels) else float("nan"), "n_calibration": int(len(labels))}


def load_map_library(settings: dict, model, image_size: int) -> None:
    """Import pytorch-grad-cam when the question-2 maps will use it (not on the fast path): its
    import takes seconds that are start-up, as compute_cams' CAM build is. The CAM itself is built
    after the occlusion pass, as its hooks would keep every batch's activations during it."""
    if not settings["evaluation"]["maps"]:
        return
    from ..models.cams import auto_target_layer, fast_path_applies

    maps_settings = settings["maps"]
    layer = maps_settings["target_layer"]
    if layer == "auto":
        layer = auto_target_layer(model, image_size)
    if not (maps_settings["fast_path"] and fast_path_applies(model, maps_settings["cam_method"], layer, image_size)):
        import pytorch_grad_cam  # noqa: F401


def attention(settings: dict, model, info: dict, images, index, runtime, scores: dict | None = None,
              masks: np.ndarray | None = None, calibrated: dict | None = None) -> dict:
    """Question 2's measures (attention_measures.py) on the verdicts' split (test when the dataset
    has one, else validation): calibration on every image; occlusion accuracies and their area on
    a fixed sample (``evaluation.occlusion_sample``); the spread of the predicted class's map on
    another (``evaluation.map_sample``), each with the number of images it rests on. ``scores``:
    the evaluation's per-image results on that split (at least ``argmax``, each image's predicted
    class), reused rather than predicted again. ``calibrated``: the evaluation's :func:`calibration`
    (else computed from ``scores``). ``masks``: the prepared object masks (object_masks.py's
    masks.npy), for the pointing game on the map sample's images that have one."""
    import time

    from ..analysis import attention_measures as am
    from ..data.batches import ArraySource

    ev, batch = settings["evaluation"], settings["model"]["batch_size"]
    split = "test" if (index.split == "test").any() else "val"
    rows = index.loc[index.split == split, "index"].to_numpy()
    labels = index.loc[index.split == split, "label"].to_numpy()
    out = {"split": split}
    t0 = time.perf_counter()
    if scores is None:
        scores = scored(model, ArraySource([(images, rows, labels)]), info, batch, runtime)[2]
    if ev["calibration"]:
        calibrated = calibrated if calibrated is not None else calibration(scores, labels, split)
        out.update({key: calibrated[key] for key in ("ece", "brier", "n_calibration")})
    if ev["occlusion"]:
        chosen = am.sample_rows(rows, ev["occlusion_sample"])
        source = ArraySource([(images, rows[chosen], labels[chosen])])
        plain = float((scores["argmax"][chosen] == labels[chosen]).mean())  # level 0: no pass of its own
        accuracies = am.occlusion_accuracies(model, source, rows[chosen], info["mean"], info["std"], batch, runtime,
                                             unoccluded=plain)
        out.update({f"occlusion_{int(round(100 * level))}": a for level, a in zip(am.LEVELS, accuracies)})
        out["occlusion_auc"] = am.occlusion_auc(accuracies)
        out["n_occlusion"] = int(len(chosen))
    if ev["maps"]:
        from ..models.cams import auto_target_layer, build_cam, explain, release

        chosen = am.sample_rows(rows, ev["map_sample"])
        predicted = scores["argmax"][chosen]
        maps_settings = settings["maps"]
        layer = maps_settings["target_layer"]
        if layer == "auto":
            layer = auto_target_layer(model, images.shape[1])
        size = images.shape[1]
        cam = build_cam(model, maps_settings["cam_method"], layer, size, maps_settings["fast_path"], batch)
        spread, located = [], []
        chunk = batch * max(1, MAP_CHUNK // batch)  # whole batches: each map as one pass over all makes it
        try:  # a chunk of maps at a time: memory holds one chunk, whatever the sample
            for start in range(0, len(chosen), chunk):
                part = rows[chosen][start:start + chunk]
                maps = np.zeros((len(part), size, size), dtype=np.float16)
                explain(cam, model, runtime, images, part, predicted[start:start + chunk], info["mean"], info["std"],
                        batch, maps)
                spread.append(am.spread_terms(maps.astype(np.float32)))
                if masks is not None and len(masks):
                    from ..files.artifacts import NO_MASK

                    with_mask = (np.asarray(masks[part]) != NO_MASK).all((1, 2))
                    located.append(am.localisation_terms(maps[with_mask].astype(np.float32), masks[part[with_mask]]))
        finally:
            release(cam)
        out["map_top10_mass"], out["map_entropy"] = am.spread_means(
            *(np.concatenate([t[i] for t in spread]) if spread else np.zeros(0) for i in (0, 1)))
        if masks is not None and len(masks):
            out.update(am.localisation_means({key: np.concatenate([t[key] for t in located]) if located
                                              else np.zeros(0) for key in ("in_object", "object_share", "hit")}))
        out["n_maps"], out["map_layer"], out["map_method"] = int(len(chosen)), layer, maps_settings["cam_method"]
    out["seconds"] = time.perf_counter() - t0
    return out


def _verdict_sampled(settings: dict, index):
    """``index`` with the verdicts' split cut to the epoch sample under ``settings['verdict_sample']``
    (``evaluation.full_split: final``, a cycle before the last): the rows left out become
    ``unsampled``."""
    if (sample := settings.get("verdict_sample")) is None:
        return index
    from ..data.splits import curve_sample, verdict_split

    split = verdict_split(index)
    kept = np.isin(index["index"].to_numpy(), curve_sample(index, sample))
    index = index.copy()
    index.loc[(index.split == split).to_numpy() & ~kept, "split"] = "unsampled"
    return index


def _runtime(settings: dict, device: str | None):
    return select_runtime(settings["training"]["precision"], settings["training"]["channels_last"], device,
                          settings["training"]["deterministic"])


@timed_stage
def evaluate(settings: dict, images_path, index_path, weights, meta, train_stats, out_metrics,
             decision=None, device: str | None = None, out_per_image=None) -> None:
    """Evaluate the checkpoint on the validation split, and on the test split when the dataset
    has one (under ``test``); add the training cost from its stats and the calibration on the
    verdicts' split (:func:`calibration`). With ``settings['verdict_sample']``
    (``evaluation.full_split: final``, a cycle before the last) the verdicts' split is cut to the
    epoch sample (data/splits.py curve_sample). ``out_per_image`` receives every evaluated image's
    result (``val_*`` and ``test_*`` arrays of per_image) as .npz. Question 2's other measures are
    the ``measure`` stage's: no setting of ``evaluation`` or ``maps`` changes this stage's output,
    so changing one reruns no evaluation, and no cycle after it."""
    images, index = load_prepared(images_path, index_path)
    index = _verdict_sampled(settings, index)
    runtime = _runtime(settings, device)
    model, info = load_checkpoint(weights, meta)
    model = runtime.prepare_model(model)
    startup_done()
    source = validation_source(images, index)
    if len(source) == 0:
        raise ValueError(f"{index_path}: the validation split is empty; set val_fraction or add a val/ folder")
    batch = settings["model"]["batch_size"]
    metrics, images_val, question2 = scored(model, source, info, batch, runtime)
    verdicts = ("val", source.labels)
    images_out = {f"val_{k}": v for k, v in images_val.items()}
    test = split_source(images, index, "test")
    if len(test):  # the held-out test split (dataset test_fraction, or the source's own): for the verdicts
        scores, images_test, question2 = scored(model, test, info, batch, runtime)
        metrics["test"] = {"n_test": scores.pop("n_val"), "loss": scores.pop("val_loss"), **scores}
        images_out.update({f"test_{k}": v for k, v in images_test.items()})
        verdicts = ("test", test.labels)
    if out_per_image is not None:
        with atomic_path(out_per_image) as tmp:
            np.savez_compressed(tmp, **images_out)
    metrics["calibration"] = calibration(question2, verdicts[1], verdicts[0])
    images_done()  # left: its metrics.json, whose K x K confusion matrix does not grow with the images
    stats = read_json(train_stats)
    metrics["verdict_sample"] = settings.get("verdict_sample")  # None: the whole verdicts' split
    metrics.update({
        "classes": info["classes"],
        "cycle": settings["cycle"],
        "ran": not stats.get("skipped", False),
        "stop_reason": read_json(decision).get("reason", "") if decision else "",
        "train_seconds": stats["train_seconds"],
        "wall_seconds": stats["wall_seconds"],
        "epochs": stats["epochs"],
        "images_seen": stats["images_seen"],
        "n_train_extra": stats["n_train_extra"],
        "n_train_original": stats.get("n_train_original"),  # the original training images (0: skipped)
        "peak_memory_mib": stats.get("peak_memory_mib"),
        "peak_memory_kind": stats.get("peak_memory_kind"),
        "device": stats.get("device"),
        "precision": stats.get("precision"),
        "versions": stats.get("versions"),  # the training job's code commit and libraries (None: skipped)
        "pretrained": info.get("pretrained"),  # the weights the model started from
    })
    write_json(out_metrics, metrics)


@timed_stage
def measure(settings: dict, images_path, index_path, weights, meta, metrics_path, per_image_path, out_measures,
            device: str | None = None, masks_path=None) -> None:
    """Question 2's measures of the checkpoint ``evaluate`` scored (:func:`attention`), written to
    ``out_measures`` as {"attention": {...}, "attention_seconds": s}. A stage of its own, read only
    by ``aggregate``: adding or changing a setting of ``evaluation`` or ``maps`` (or masks) reruns
    these jobs and the tables, never an evaluation, a stop-rule decision or a cycle. Each image's
    predicted class comes from the evaluation's ``per_image.npz`` (its softmax argmax, the logits'
    argmax: softmax is strictly increasing) and the calibration from its ``metrics.json``, so the
    measures equal those of one stage that did both."""
    import time

    t0 = time.perf_counter()
    images, index = load_prepared(images_path, index_path)
    index = _verdict_sampled(settings, index)
    calibrated = read_json(metrics_path).get("calibration")
    if calibrated is None and settings["evaluation"]["calibration"]:
        raise ValueError(f"{metrics_path} has no calibration (written by an older evaluate): rerun evaluate for "
                         "this cycle first")
    split = "test" if (index.split == "test").any() else "val"
    rows = index.loc[index.split == split, "index"].to_numpy()
    with np.load(per_image_path) as saved:
        if not np.array_equal(saved[f"{split}_index"], rows):
            raise ValueError(f"{per_image_path}: its {split} rows are not those of {index_path} (an evaluation of "
                             "other prepared images): rerun evaluate for this cycle first")
        scores = {"argmax": saved[f"{split}_prediction"].astype(np.int64)}
    runtime = _runtime(settings, device)
    model, info = load_checkpoint(weights, meta)
    model = runtime.prepare_model(model)
    load_map_library(settings, model, images.shape[1])
    startup_done()
    masks = np.load(masks_path, mmap_mode="r") if masks_path is not None else None
    measured = attention(settings, model, info, images, index, runtime, scores, masks, calibrated)
    measured.pop("seconds")
    images_done()
    write_json(out_measures, {"attention": measured, "attention_seconds": time.perf_counter() - t0})
