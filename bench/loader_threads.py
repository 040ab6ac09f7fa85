"""Loader end to end: the uint8 batches the loop receives from gather threads against its anchor,
the plain gather (and the DataLoader worker processes they replaced); the plain gather (one part,
and two parts mixed in a batch as in a retrain) against its own anchor, numpy's fancy index of the
same rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from measure import median_times


def bench_loader(n_images: int, size: int, batch: int, repeats: int, threads=(1, 2)) -> dict:
    """What the training loop receives, end to end: uint8 batches (images, labels, plan) of one
    shuffled, augmented epoch from make_loader's gather threads, against the plain gather of
    the same rows in one process (the ceiling) and against the transport it replaced (torch
    DataLoader worker processes over the same batches: a fresh shared-memory block per batch).
    The array is warm in the page cache, as after the first epoch. Batches are checked equal."""
    from torch.utils.data import DataLoader

    from proxyattention.data.batches import ArraySource, make_loader

    rng = np.random.default_rng(0)
    out = {"images": n_images, "size": size, "batch": batch}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8))
        mapped = np.load(Path(tmp) / "images.npy", mmap_mode="r")
        source = ArraySource([(mapped, np.arange(n_images), np.zeros(n_images))])
        np.asarray(mapped).sum()

        def loader_of(n_threads):
            device_batches, sampler = make_loader(source, (0.5,) * 3, (0.5,) * 3, batch, seed=(0, 1), train=True,
                                                  hflip=True, crop_padding=4, num_workers=n_threads)
            return device_batches.loader, sampler  # the uint8 batches, before the device transform

        gathered, sampler = loader_of(0)
        keys = list(sampler)

        half = n_images // 2  # the same rows as two parts: a retrain's original and added images
        mixed = ArraySource([(mapped, np.arange(half), np.zeros(half)),
                             (mapped, np.arange(half, n_images), np.zeros(n_images - half))])

        def raw():
            for _, _, idx in keys:
                mapped[idx]

        def plain():
            for _, _, idx in keys:
                source.gather(idx)

        def plain_mixed():
            for _, _, idx in keys:
                mixed.gather(idx)

        runs = {"raw_index": raw, "plain_gather": plain, "mixed_gather": plain_mixed}
        loaders = {"threads_0": gathered}
        for n in threads:
            loaders[f"threads_{n}"] = loader_of(n)[0]
            loaders[f"dataloader_workers_{n}"] = DataLoader(gathered.dataset, sampler=sampler, batch_size=None,
                                                            num_workers=n, persistent_workers=True, prefetch_factor=4)
        for name, loader in loaders.items():
            runs[name] = (lambda it: (lambda: [None for _ in it]))(loader)
        reference = [b for b in gathered]
        equal = True
        for name, loader in loaders.items():
            got = list(loader)
            equal &= len(got) == len(reference) and all(
                torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(got, reference))
        times = median_times(list(runs.values()), repeats)
    n = sum(len(k[2]) for k in keys)
    for (name, _), t in zip(runs.items(), times):
        out[f"{name}_img_s"] = n / t
    for n_threads in threads:
        out[f"threads_{n_threads}_of_plain"] = out[f"threads_{n_threads}_img_s"] / out["plain_gather_img_s"]
        out[f"workers_{n_threads}_of_plain"] = out[f"dataloader_workers_{n_threads}_img_s"] / out["plain_gather_img_s"]
    out["plain_of_raw"] = out["plain_gather_img_s"] / out["raw_index_img_s"]
    out["mixed_of_raw"] = out["mixed_gather_img_s"] / out["raw_index_img_s"]
    out["identical_batches"] = bool(equal and all(
        np.array_equal(mixed.gather(idx)[0], mapped[idx]) for _, _, idx in keys[:3]))
    return out
