"""The per-epoch curve's cost: one finetune with every epoch's point on the whole verdicts' split
(``training.epoch_sample: all``) against the same finetune with the default sample (1,000
images), side by side in one process, through the training stage itself (stages/train.py); and
one pass over the whole split on the final checkpoint, the pass the training job made before
this change at its last epoch and that the evaluation now makes alone.

Anchor: ``epoch_sample: all``. Study 2's size: 5,000 Fashion-MNIST training images at 64 px
(``{per_class: [500]}``), the official 10,000 test images as the verdicts' split,
EfficientNet-Lite0 with its bundled weights, 8 epochs, batch 50, one thread per job as study 2.

    python bench/epoch_curves.py [--fashion /usr/share/datasets/fashion-mnist] [--epochs 8]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def bench_epoch_curves(fashion=FASHION, per_class: int = 500, epochs: int = 8, size: int = 64, threads: int = 1,
                       samples=("all", 1000)) -> list[dict]:
    """One row per setting: the job's wall and training seconds (train_stats.json), the curve
    passes' seconds (the rest, start-up equal in both), the epochs.csv points; and one row timing a
    whole-split pass of the final checkpoint (what the old last epoch repeated)."""
    import torch

    from proxyattention.data.batches import ArraySource
    from proxyattention.files.artifacts import load_prepared
    from proxyattention.models.build import load_checkpoint
    from proxyattention.models.inference import predict_logits
    from proxyattention.runtime.device import select_runtime
    from proxyattention.settings.stage_settings import stage_settings
    from proxyattention.settings.validate import validate
    from proxyattention.stages.prepare import prepare
    from proxyattention.stages.train import train

    torch.set_num_threads(threads)
    config = validate({
        "datasets": {"fm": {"source": "idx", "path": str(fashion), "image_size": size,
                            "train_sizes": {"per_class": [per_class]}}},
        "models": {"lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "bundled", "batch_size": 50,
                             "lr": 0.001}},
        "training": {"epochs_finetune": epochs, "epochs": 2, "cycle_mode": "continue", "num_workers": 0},
        "cycles": 0,
    })
    tmp = Path(tempfile.mkdtemp(prefix="bench_curves_"))
    prepare(config["datasets"]["fm"], tmp / "images.npy", tmp / "index.csv", tmp / "classes.json",
            tmp / "skipped.csv", threads=2)
    settings = stage_settings(config, f"fm/n{per_class}pc", "lite0", 0, "train")
    rows = []
    for sample in samples:
        out = tmp / str(sample)
        out.mkdir()
        start = time.perf_counter()
        train(settings, tmp / "images.npy", tmp / "index.csv", tmp / "classes.json", out / "model.safetensors",
              out / "model.json", out / "epochs.csv", out / "train_stats.json", seed=0, epoch_sample=sample)
        wall = time.perf_counter() - start
        stats = json.loads((out / "train_stats.json").read_text())
        table = pd.read_csv(out / "epochs.csv")
        rows.append({"epoch_sample": str(sample), "curve_images": int(table.curve_images.iloc[0]),
                     "curve_points": int(table.curve_accuracy.notna().sum()), "wall_s": wall,
                     "train_s": stats["train_seconds"], "rest_s": wall - stats["train_seconds"],
                     "n_train": stats["n_train_original"]})
    images, index = load_prepared(tmp / "images.npy", tmp / "index.csv")
    val = index[index.split == "val"]
    model, info = load_checkpoint(tmp / str(samples[0]) / "model.safetensors", tmp / str(samples[0]) / "model.json")
    runtime = select_runtime("auto", True)
    model = runtime.prepare_model(model)
    source = ArraySource([(images, val["index"].to_numpy(), val["label"].to_numpy())])
    start = time.perf_counter()
    predict_logits(model, source, info["mean"], info["std"], 50, runtime)
    rows.append({"epoch_sample": "one whole-split pass", "curve_images": len(val), "curve_points": 1,
                 "wall_s": time.perf_counter() - start, "train_s": np.nan, "rest_s": np.nan, "n_train": np.nan})
    return rows


if __name__ == "__main__":
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fashion", default=str(FASHION), help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=500)
    args = parser.parse_args()
    result = bench_epoch_curves(args.fashion, args.per_class, args.epochs)
    print(pd.DataFrame(result).to_string(index=False, float_format="{:.1f}".format))
