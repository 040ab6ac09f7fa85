"""Stage ``find_misclassified``: predict every training image and select the ones to explain.

Only the training split is read; validation images never enter Proxy Attention.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.batches import ArraySource
from ..data.splits import restrict_to_size
from ..files.artifacts import load_prepared
from ..files.atomic import write_csv
from ..models.build import load_checkpoint
from ..models.inference import cross_entropy, logits_in_chunks, softmax
from ..runtime.device import select_runtime
from ..runtime.timing import startup_done, timed_stage


def prediction_table(logits: np.ndarray, index: pd.DataFrame) -> pd.DataFrame:
    """One row per image: index, source, label, prediction, confidence, true-class probability, loss."""
    probs = softmax(logits)
    labels = index["label"].to_numpy()
    pred = probs.argmax(1)
    return pd.DataFrame({
        "index": index["index"].to_numpy(),
        "source": index["source"].to_numpy(),
        "label": labels,
        "prediction": pred,
        "confidence": probs[np.arange(len(pred)), pred],
        "true_probability": probs[np.arange(len(pred)), labels],
        "loss": cross_entropy(logits, labels),
    })


PREDICT_CHUNK = 1024  # images whose logits are held at once (a whole number of batches)


def predicted_table(model, source, rows: pd.DataFrame, info: dict, batch_size: int, runtime) -> pd.DataFrame:
    """prediction_table of ``source``'s images (``rows``: their index rows, in order), built a chunk
    of logits at a time: the same table, row for row, without all N x K logits in memory (at
    ImageNet's 1.28 M images and 1,000 classes those are 5 GB)."""
    parts, start = [], 0
    for logits in logits_in_chunks(model, source, info["mean"], info["std"], batch_size, runtime, PREDICT_CHUNK):
        parts.append(prediction_table(logits, rows.iloc[start:start + len(logits)]))
        start += len(logits)
    if not parts:
        return prediction_table(np.zeros((0, len(info["classes"])), np.float32), rows.iloc[0:0])
    return pd.concat(parts, ignore_index=True)


def select(table: pd.DataFrame, rule: str, confidence_below: float = 0.5, max_count: int | None = None,
           max_fraction: float | None = None, order: str = "loss") -> pd.DataFrame:
    """Rows chosen by the selection rule, highest loss first (``order='met'``: in the order the
    recorded training epoch met them, a ``met`` column), capped by count or fraction.

    ``misclassified``: prediction differs from label; ``low_confidence``: the
    true-class probability is below ``confidence_below`` (right or wrong);
    ``both``: either; ``hardest``: every image, so that the caps keep the highest-loss ones (a model
    that fits its training set misclassifies none: a scarce training size). ``max_fraction`` keeps
    ceil(fraction * selected) rows (under ``hardest``, that fraction of the training images).
    """
    wrong = table["prediction"] != table["label"]
    unsure = table["true_probability"] < confidence_below
    every = pd.Series(True, index=table.index)
    chosen = {"misclassified": wrong, "low_confidence": unsure, "both": wrong | unsure, "hardest": every}[rule]
    if order == "met":
        picked = table[chosen].sort_values(["met", "index"], kind="stable")
    else:
        picked = table[chosen].sort_values(["loss", "index"], ascending=[False, True], kind="stable")
    if max_fraction is not None:
        picked = picked.head(int(np.ceil(max_fraction * len(picked))))
    if max_count is not None:
        picked = picked.head(max_count)
    return picked.reset_index(drop=True)


COLUMNS = ["index", "source", "label", "prediction", "confidence", "true_probability", "loss"]


@timed_stage
def find_misclassified(settings: dict, images_path, index_path, weights, meta, out_predictions, out_selected,
                       run: bool = True, device: str | None = None) -> None:
    """Predict the training images with the checkpoint; write all predictions and the selection.

    With ``run=False`` (a cycle after the stop rule held) both tables are written empty.
    """
    if not run:
        for out in (out_predictions, out_selected):
            write_csv(out, pd.DataFrame(columns=COLUMNS))
        return
    images, index = load_prepared(images_path, index_path)
    index = restrict_to_size(index, settings.get("train_size"), str(index_path))
    train = index[index.split == "train"].reset_index(drop=True)
    runtime = select_runtime(settings["training"]["precision"], settings["training"]["channels_last"], device,
                             settings["training"]["deterministic"])
    model, info = load_checkpoint(weights, meta)
    model = runtime.prepare_model(model)
    startup_done()
    source = ArraySource([(images, train["index"].to_numpy(), train["label"].to_numpy())])
    table = predicted_table(model, source, train, info, settings["model"]["batch_size"], runtime)
    sel = settings["proxy"]["selection"]
    write_csv(out_predictions, table)
    write_csv(out_selected, select(table, sel["rule"], sel["confidence_below"], sel["max_count"], sel["max_fraction"]))
