"""Stage ``evaluate``: validation metrics of one checkpoint, with its training cost.

Metrics come from the confusion matrix (rows: true class, columns: predicted),
with scikit-learn's conventions: a class never predicted has precision 0, a
class absent from validation is left out of the macro averages.
"""

from __future__ import annotations

import numpy as np

from .atomic import read_json, write_json
from .inference import cross_entropy, predict_logits
from .models import load_checkpoint
from .prepare import load_prepared
from .runtime import select_runtime
from .timing import timed_stage
from .train import split_source, validation_source


def classification_metrics(logits: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """Accuracy, balanced accuracy, macro and per-class precision/recall/F1, top-5, loss, confusion."""
    pred = logits.argmax(1)
    cm = np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)  # sklearn's macro average uses the labels that occur
    out = {
        "n_val": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "val_loss": float(cross_entropy(logits, labels).mean()),
        "precision_per_class": precision.tolist(),
        "recall_per_class": recall.tolist(),
        "f1_per_class": f1.tolist(),
        "support_per_class": support.tolist(),
        "confusion_matrix": cm.tolist(),
    }
    if n_classes > 5:
        top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        out["top5_accuracy"] = float((top5 == labels[:, None]).any(1).mean())
    return out


@timed_stage
def evaluate(settings: dict, images_path, index_path, weights, meta, train_stats, out_metrics,
             decision=None, device: str | None = None) -> None:
    """Evaluate the checkpoint on the validation split, and on the test split when the dataset
    has one (under ``test``); add the training cost from its stats."""
    images, index = load_prepared(images_path, index_path)
    runtime = select_runtime(settings["training"]["precision"], settings["training"]["channels_last"], device,
                             settings["training"]["deterministic"])
    model, info = load_checkpoint(weights, meta)
    model = runtime.prepare_model(model)
    source = validation_source(images, index)
    if len(source) == 0:
        raise ValueError(f"{index_path}: the validation split is empty; set val_fraction or add a val/ folder")
    logits = predict_logits(model, source, info["mean"], info["std"], settings["model"]["batch_size"], runtime)
    metrics = classification_metrics(logits, source.labels, len(info["classes"]))
    test = split_source(images, index, "test")
    if len(test):  # the held-out test split (dataset test_fraction, or the source's own): for the verdicts
        test_logits = predict_logits(model, test, info["mean"], info["std"], settings["model"]["batch_size"], runtime)
        scores = classification_metrics(test_logits, test.labels, len(info["classes"]))
        metrics["test"] = {"n_test": scores.pop("n_val"), "loss": scores.pop("val_loss"), **scores}
    stats = read_json(train_stats)
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
        "peak_memory_mib": stats.get("peak_memory_mib"),
        "peak_memory_kind": stats.get("peak_memory_kind"),
        "device": stats.get("device"),
        "precision": stats.get("precision"),
        "versions": stats.get("versions"),  # the training job's code commit and libraries (None: skipped)
    })
    write_json(out_metrics, metrics)
