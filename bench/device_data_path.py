"""Data path at the device: uint8 rows and an augmentation plan per worker against its anchor,
the numpy float path; and the device side against a training step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from measure import median_times


def bench_data_path(n_images: int, size: int, batch: int, repeats: int, step_model: str = "resnet18") -> dict:
    """Per DataLoader worker: today's path (gather, then crop, flip and normalise in numpy: the
    reference) vs the worker's share now (gather uint8 and draw the crop/flip plan); the device
    side (crop, flip, convert, normalise a uint8 batch) in images/s and as a fraction of one
    training step of ``step_model`` at the same batch and size. Batches are checked equal."""
    import timm
    import torch.nn.functional as F

    from proxyattention.data.batches import (
        ArraySource,
        DeviceTransform,
        augment,
        draw_plan,
        normalise,
    )
    from proxyattention.runtime.device import select_runtime

    runtime = select_runtime("auto", True)
    rng = np.random.default_rng(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8))
        mapped = np.load(Path(tmp) / "images.npy", mmap_mode="r")
        source = ArraySource([(mapped, np.arange(n_images), np.zeros(n_images))])
        np.asarray(mapped).sum()  # warm: the page cache holds the array, as after the first epoch
        order = rng.permutation(n_images)
        batches = [order[i : i + batch] for i in range(0, n_images - batch + 1, batch)]

        def numpy_path():
            for b, idx in enumerate(batches):
                images, _ = source.gather(idx)
                normalise(augment(images, draw_plan(np.random.default_rng((0, b)), len(idx), True, 4), 4), mean, std)

        def worker_path():
            for b, idx in enumerate(batches):
                images, _ = source.gather(idx)
                torch.from_numpy(images), torch.from_numpy(draw_plan(np.random.default_rng((0, b)), len(idx), True, 4))

        transform = DeviceTransform(mean, std, 4)
        images, _ = source.gather(batches[0])
        plan = torch.from_numpy(draw_plan(np.random.default_rng((0, 0)), batch, True, 4))
        want = normalise(augment(images, plan.numpy(), 4), mean, std)
        on_device = torch.from_numpy(images).to(runtime.device), plan.to(runtime.device)
        equal = torch.equal(transform(*on_device, runtime.channels_last).cpu(), want)

        def device_side():
            transform(*on_device, runtime.channels_last)

        model = runtime.prepare_model(timm.create_model(step_model, num_classes=10)).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = transform(*on_device, runtime.channels_last)
        y = torch.zeros(batch, dtype=torch.int64, device=runtime.device)

        def train_step():
            with runtime.autocast():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_numpy, t_worker = median_times([numpy_path, worker_path], repeats)
        t_device, t_step = median_times([device_side, train_step], repeats)
    n = batch * len(batches)
    return {"size": size, "batch": batch, "device": str(runtime.device), "numpy_path_img_s_per_worker": n / t_numpy,
            "worker_path_img_s_per_worker": n / t_worker, "worker_ratio": t_numpy / t_worker,
            "device_side_img_s": batch / t_device, "step_model": step_model, "precision": runtime.precision,
            "device_side_of_step": t_device / t_step, "identical_batch": equal}
