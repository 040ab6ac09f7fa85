"""Batches from prepared uint8 arrays: the DataLoader's workers do the uint8-to-float work.

A batch is gathered from memory-mapped arrays with one fancy-indexing call per
source, augmented (random crop after padding, horizontal flip) and normalised
in numpy inside the worker, so the training process only moves a ready float
tensor to the device. Every random choice comes from a generator seeded by
(seed, cycle, epoch, batch), so results do not depend on the number of workers, a
resumed run draws exactly what an uninterrupted one would, each cycle draws a
fresh stream, and every arm draws the same stream within a cycle (common random
numbers keep paired differences between arms tight).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class ArraySource:
    """Concatenation of several uint8 image arrays (memory-mapped or in memory) with labels."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
        """``parts``: (images, rows into images, labels of those rows) for each source."""
        self.parts = [(images, np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=np.int64)) for images, rows, labels in parts]
        self.offsets = np.cumsum([0] + [len(rows) for _, rows, _ in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([labels for _, _, labels in self.parts])

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, H, W, 3) uint8 and labels (B,) for global indices, in the given order."""
        indices = np.asarray(indices, dtype=np.int64)
        first = self.parts[0][0]
        images = np.empty((len(indices),) + first.shape[1:], dtype=np.uint8)
        labels = np.empty(len(indices), dtype=np.int64)
        part_of = np.searchsorted(self.offsets, indices, side="right") - 1
        for p, (array, rows, part_labels) in enumerate(self.parts):
            where = np.flatnonzero(part_of == p)
            if len(where) == 0:
                continue
            local = indices[where] - self.offsets[p]
            wanted = rows[local]
            # Memory-mapped reads are fastest in ascending order.
            order = np.argsort(wanted, kind="stable")
            images[where[order]] = array[wanted[order]]
            labels[where] = part_labels[local]
        return images, labels


def stream_key(seed) -> tuple[int, ...]:
    """The random stream of a training job: ``seed`` or a tuple such as (seed, cycle)."""
    return tuple(int(s) for s in seed) if isinstance(seed, (tuple, list)) else (int(seed),)


def augment(images: np.ndarray, rng: np.random.Generator, hflip: bool, crop_padding: int) -> np.ndarray:
    """Random crop after zero padding and random horizontal flip, per image, on a uint8 batch."""
    b, h, w, _ = images.shape
    out = images
    if crop_padding > 0:
        p = crop_padding
        padded = np.zeros((b, h + 2 * p, w + 2 * p, 3), dtype=np.uint8)
        padded[:, p : p + h, p : p + w] = images
        dy = rng.integers(0, 2 * p + 1, size=b)
        dx = rng.integers(0, 2 * p + 1, size=b)
        rows = dy[:, None] + np.arange(h)[None, :]
        cols = dx[:, None] + np.arange(w)[None, :]
        out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if hflip:
        flip = rng.random(b) < 0.5
        out = out.copy() if out is images else out
        out[flip] = out[flip, :, ::-1]
    return out


def normalise(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (B, H, W, 3) to float32 (B, 3, H, W) with the model's mean and std."""
    scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float32))
    shift = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
    x = images.astype(np.float32) * scale - shift
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


class BatchDataset(Dataset):
    """Map-style dataset whose items are whole batches: ``dataset[(epoch, batch, indices)]``."""

    def __init__(self, source: ArraySource, mean, std, seed, train: bool, hflip=False, crop_padding=0):
        self.source, self.mean, self.std, self.seed = source, mean, std, stream_key(seed)
        self.train, self.hflip, self.crop_padding = train, hflip, crop_padding

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        epoch, batch, indices = key
        images, labels = self.source.gather(indices)
        if self.train:
            rng = np.random.default_rng((*self.seed, epoch, batch))
            images = augment(images, rng, self.hflip, self.crop_padding)
        return normalise(images, self.mean, self.std), torch.from_numpy(labels)


class EpochBatches(torch.utils.data.Sampler):
    """Yields (epoch, batch, indices): a fresh permutation per epoch when shuffling."""

    def __init__(self, n: int, batch_size: int, seed, shuffle: bool, drop_last: bool = False):
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed = stream_key(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = np.random.default_rng((*self.seed, self.epoch, 7)).permutation(self.n) if self.shuffle else np.arange(self.n)
        for b in range(len(self)):
            yield self.epoch, b, order[b * self.batch_size : (b + 1) * self.batch_size]


def make_loader(source: ArraySource, mean, std, batch_size: int, seed=0, train: bool = False,
                hflip: bool = False, crop_padding: int = 0, num_workers: int = 0, pin_memory: bool = False):
    """A DataLoader over ``source`` and its sampler (call ``sampler.set_epoch`` each epoch)."""
    dataset = BatchDataset(source, mean, std, seed, train, hflip, crop_padding)
    # Drop a last batch of one when training: BatchNorm cannot normalise a single sample.
    drop_last = train and len(source) % batch_size == 1
    sampler = EpochBatches(len(source), batch_size, seed, shuffle=train, drop_last=drop_last)
    loader = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return loader, sampler
