"""Per-epoch curves: the columns of a training job's ``epochs.csv`` and its last point, which is
the evaluation's (stages/train.py pays no pass the evaluation pays on the same checkpoint)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.splits import curve_sample

EPOCH_COLUMNS = ["epoch", "run_epoch", "lr_start", "lr_end", "train_loss", "train_accuracy", "curve_split",
                 "curve_images", "curve_loss", "curve_accuracy", "seconds", "images_per_s"]


def epoch_curve(epochs_path, per_image_path, index_path) -> pd.DataFrame:
    """A training job's epochs.csv with its last epoch's curve point filled in from the evaluation
    of the same checkpoint (its per_image.npz): accuracy and mean cross-entropy on the same sample of
    the verdicts' split (the rows curve_sample drew, ``curve_images`` of them). Rows of an older
    epochs.csv (``val_accuracy``: the whole validation split every epoch) come back as they are."""
    table = pd.read_csv(epochs_path)
    if not len(table) or "curve_accuracy" not in table or np.isfinite(table.curve_accuracy.iloc[-1]):
        return table
    split, n = table.curve_split.iloc[-1], int(table.curve_images.iloc[-1])
    index = pd.read_csv(index_path, keep_default_na=False)
    with np.load(per_image_path, allow_pickle=False) as data:
        rows, p_true = data[f"{split}_index"], data[f"{split}_p_true"].astype(np.float64)
        right = data[f"{split}_prediction"] == data[f"{split}_label"]
    wanted = curve_sample(index, n)
    at = np.isin(rows, wanted)
    if int(at.sum()) != len(wanted):
        raise ValueError(f"{per_image_path} holds {int(at.sum())} of the {len(wanted)} {split} images of the curve "
                         f"sample of {epochs_path}: they are not from the same run")
    table.loc[table.index[-1], "curve_accuracy"] = float(right[at].mean()) if len(wanted) else np.nan
    table.loc[table.index[-1], "curve_loss"] = float(-np.log(np.clip(p_true[at], 1e-12, None)).mean()) \
        if len(wanted) else np.nan
    return table
