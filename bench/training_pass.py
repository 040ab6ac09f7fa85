"""The training-pass record (training/record.py): what recording costs an epoch, and what a cycle
saves by selecting and mapping from the record instead of the separate passes.

Anchors: the same epoch without recording (same model, data, batches), timed in turn; and the
separate passes themselves (find_misclassified's inference over every training image,
compute_cams's Grad-CAM of the selected images) against the record's two stages, beside one
training epoch of the same data, all in one run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from measure import median_times

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _data(n: int, size: int, classes: int = 10):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, size=n)
    return images, labels


def bench_recording(model_name: str, size: int, batch: int, n_images: int, repeats: int,
                    methods=(None, "cam", "gradcam_loss")) -> list[dict]:
    """One epoch of the stage's loop with the recorder (selection only, ``cam``, ``gradcam_loss`` at
    the model's auto layer) against the same epoch without it: the median of ``repeats`` in each
    order (with first, without first), averaged."""
    import timm

    from proxyattention.data.batches import ArraySource, make_loader
    from proxyattention.models.cams import auto_target_layer
    from proxyattention.runtime.device import select_runtime
    from proxyattention.training.loop import train_one_epoch
    from proxyattention.training.record import TrainingPassRecorder

    runtime = select_runtime("auto", True)
    images, labels = _data(n_images, size)
    source = ArraySource([(images, np.arange(n_images), labels)])

    def setup():
        torch.manual_seed(0)
        model = runtime.prepare_model(timm.create_model(model_name, num_classes=10)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loader, sampler = make_loader(source, MEAN, STD, batch, seed=0, train=True, hflip=True, crop_padding=4,
                                      pin_memory=runtime.device.type == "cuda", device=runtime.device,
                                      channels_last=runtime.channels_last)
        return model, opt, loader, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), runtime.grad_scaler()

    layer = auto_target_layer(timm.create_model(model_name, num_classes=10), size)
    model, opt, loader, sched, scaler = setup()  # the process's first epochs are slower (allocator, kernel
    for _ in range(2):                           # caches): paid here, before anything is timed
        train_one_epoch(model, loader, opt, sched, scaler, runtime)
    rows = []
    for method in methods:
        plain, recorded = setup(), setup()

        def without(p=plain):
            model, opt, loader, sched, scaler = p
            loader.with_rows = False
            train_one_epoch(model, loader, opt, sched, scaler, runtime)

        def with_record(p=recorded, method=method):
            model, opt, loader, sched, scaler = p
            loader.with_rows = True
            recorder = TrainingPassRecorder(model, n_images, runtime.device, method, layer)
            try:
                train_one_epoch(model, loader, opt, sched, scaler, runtime, recorder=recorder)
            finally:
                recorder.close()
            recorder.result(n_images)  # the one read of the device, after the epoch

        # both orders, so neither path is always the first of a repeat
        first = median_times([without, with_record], repeats)
        second = median_times([with_record, without], repeats)[::-1]
        t_plain, t_record = (first[0] + second[0]) / 2, (first[1] + second[1]) / 2
        rows.append({"model": model_name, "size": size, "images": n_images, "batch": batch,
                     "record": method or "selection only", "layer": layer if method == "gradcam_loss" else
                     ("pooled" if method == "cam" else "-"), "device": str(runtime.device),
                     "epoch_s": t_plain, "epoch_recording_s": t_record, "ratio": t_record / t_plain})
    return rows


def bench_cycle_saving(n_images: int, size: int, n_selected: int, epochs: int, repeats: int,
                       model_name: str = "tf_efficientnet_lite0", layer: str = "blocks.2", batch: int = 50) -> dict:
    """At study 2's size (5,000 images at 64 px, lite0, Grad-CAM at blocks.2, 2 epochs a cycle): the
    separate passes a cycle pays (find: inference over every training image; CAM: Grad-CAM of the
    selected) against the record's stages (select_from_record, maps_from_record), beside one
    training epoch, so the saving is in seconds and as a share of a cycle."""
    import timm

    from proxyattention.data.batches import ArraySource, make_loader
    from proxyattention.models.cams import build_cam, explain, release
    from proxyattention.models.inference import predict_logits
    from proxyattention.runtime.device import select_runtime
    from proxyattention.stages.find_misclassified import prediction_table, select
    from proxyattention.stages.from_record import maps_from_record, select_from_record
    from proxyattention.training.loop import train_one_epoch
    from proxyattention.training.record import write_record

    runtime = select_runtime("auto", True)
    images, labels = _data(n_images, size)
    source = ArraySource([(images, np.arange(n_images), labels)])
    torch.manual_seed(0)
    model = runtime.prepare_model(timm.create_model(model_name, num_classes=10))
    index = pd.DataFrame({"index": np.arange(n_images), "source": [f"{i}.png" for i in range(n_images)],
                          "label": labels, "split": "train"})
    rows = np.arange(n_selected)

    def find():
        model.eval()
        table = prediction_table(predict_logits(model, source, MEAN, STD, batch, runtime), index)
        select(table, "misclassified")

    def cams():
        model.eval()
        cam = build_cam(model, "gradcam", layer, size, True, batch)
        out = np.zeros((n_selected, size, size), np.float16)
        try:
            explain(cam, model, runtime, images, rows, labels[rows], MEAN, STD, batch, out)
        finally:
            release(cam)

    tmp = Path(tempfile.mkdtemp(prefix="bench_record_"))
    rng = np.random.default_rng(1)
    h = 8  # blocks.2's map at 64 px
    record = {"prediction": rng.integers(0, 10, n_images), "confidence": rng.random(n_images).astype(np.float32),
              "true_probability": rng.random(n_images).astype(np.float32),
              "loss": rng.random(n_images).astype(np.float32), "met": rng.permutation(n_images),
              "maps": rng.random((n_images, h, h)).astype(np.float16), "map_valid": np.ones(n_images, bool),
              "layer": layer}
    write_record(tmp / "training_pass.npz", record, {"maps": "gradcam_loss", "target": "label"}, source,
                 seed=0, epoch=0, augment={"hflip": True, "crop_padding": 4})
    index.to_csv(tmp / "index.csv", index=False)
    (tmp / "classes.json").write_text(f'{{"image_size": {size}}}')
    settings = {"proxy": {"selection": {"rule": "misclassified", "confidence_below": 0.5, "max_count": n_selected,
                                        "max_fraction": None, "order": "loss"}}}

    def from_record():
        select_from_record(settings, tmp / "index.csv", tmp / "training_pass.npz", tmp / "p.csv", tmp / "s.csv")
        maps_from_record(settings, tmp / "classes.json", tmp / "training_pass.npz", tmp / "s.csv",
                         tmp / "cams.npz", tmp / "cams.csv")

    loader, sampler = make_loader(source, MEAN, STD, batch, seed=0, train=True, hflip=True, crop_padding=4,
                                  device=runtime.device, channels_last=runtime.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched, scaler = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), runtime.grad_scaler()

    def epoch():
        train_one_epoch(model, loader, opt, sched, scaler, runtime)

    t_find, t_cams, t_record, t_epoch = median_times([find, cams, from_record, epoch], repeats)
    cycle = epochs * t_epoch + t_find + t_cams  # a separate-pass cycle: its training and the two passes
    return {"model": model_name, "images": n_images, "size": size, "selected": n_selected, "epochs": epochs,
            "device": str(runtime.device), "find_s": t_find, "cams_s": t_cams, "record_stages_s": t_record,
            "epoch_s": t_epoch, "saved_s": t_find + t_cams - t_record,
            "saved_share_of_cycle": (t_find + t_cams - t_record) / cycle}
