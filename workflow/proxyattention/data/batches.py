"""Batches from prepared uint8 arrays: threads gather, the job's device transforms.

A gather thread in the training process takes a uint8 batch from memory-mapped arrays with
one fancy-indexing call per source (numpy copies without holding the GIL, so it overlaps the
training step) and looks up that batch's augmentation plan (crop offsets after zero padding,
horizontal flips); the batch goes to the device as (pinned) uint8, 4x fewer bytes than
float32, and :class:`DeviceTransform` crops, flips, converts and normalises it with batched
tensor ops there. Threads, not DataLoader worker processes: a worker's batch crossed to the
training process through a fresh shared-memory block each time, and that transport cost ten
times the gather itself (bench/: ``data_path``). The result equals, bit for bit,
augmenting and normalising in numpy (:func:`augment` and :func:`normalise`, kept as the
reference the tests and bench/ compare against).

Every random choice comes from a generator keyed by (seed, cycle, purpose, epoch) (streams.py),
so results do not depend on the number of workers, a resumed run draws exactly what an
uninterrupted one would, and each cycle draws a fresh stream. Within a cycle, what arms can
share they share (common random numbers keep paired differences tight): the original training
images come in the same relative order with the same crop and flip each, in every arm; an
adding arm's added images are shuffled, placed among the originals and augmented by streams of
their own (the same for arms that add the same number of images). Where images are added, the
batch boundaries move, so batch composition is not shared.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from .random_erasing import epoch_boxes, erase
from .streams import ADDED_AUGMENT, ADDED_ORDER, AUGMENT, ORDER, generator, stream_key


# From this many bytes per image a mixed batch is copied row by row (one copy; at 224 px as fast as
# the raw fancy index), below it by a fancy index per part and a scatter (measured: bench/ loader).
ROW_BY_ROW_BYTES = 32 * 1024


class ArraySource:
    """Concatenation of several uint8 image arrays (memory-mapped or in memory) with labels."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
        """``parts``: (images, rows into images, labels of those rows) for each source."""
        self.parts = [(images, np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=np.int64)) for images, rows, labels in parts]
        self.offsets = np.cumsum([0] + [len(rows) for _, rows, _ in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_original(self) -> int:
        """Images of the first part (the original training images; the rest were added)."""
        return int(self.offsets[1]) if len(self.parts) else 0

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([labels for _, _, labels in self.parts])

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, H, W, 3) uint8 and labels (B,) for global indices, in the given order.

        Each image is copied once. A batch from one part (every batch of a finetune, an
        evaluation, a prediction) is that part's fancy index, the raw index itself; a batch that
        mixes parts (a retrain's original and added images) copies large images row by row
        into place, in ascending row order, and small ones (where a Python loop costs more than a
        second copy) by a fancy index per part scattered into place (bench/: ``loader``)."""
        indices = np.asarray(indices, dtype=np.int64)
        part_of = np.searchsorted(self.offsets, indices, side="right") - 1
        if len(indices) and part_of[0] == part_of[-1] and (part_of == part_of[0]).all():
            array, rows, part_labels = self.parts[part_of[0]]
            local = indices - self.offsets[part_of[0]]
            return np.asarray(array[rows[local]]), part_labels[local]
        first = self.parts[0][0]
        images = np.empty((len(indices),) + first.shape[1:], dtype=np.uint8)
        labels = np.empty(len(indices), dtype=np.int64)
        row_by_row = images[0].nbytes >= ROW_BY_ROW_BYTES if len(indices) else False
        for p, (array, rows, part_labels) in enumerate(self.parts):
            where = np.flatnonzero(part_of == p)
            if len(where) == 0:
                continue
            local = indices[where] - self.offsets[p]
            wanted = rows[local]
            # Memory-mapped reads are fastest in ascending order.
            order = np.argsort(wanted, kind="stable")
            if row_by_row:
                for destination, row in zip(where[order].tolist(), wanted[order].tolist()):
                    images[destination] = array[row]
            else:
                images[where[order]] = array[wanted[order]]
            labels[where] = part_labels[local]
        return images, labels


def draw_plan(rng: np.random.Generator, b: int, hflip: bool, crop_padding: int) -> np.ndarray:
    """(B, 3) int64: each image's crop offsets (dy, dx) into the zero-padded image and flip flag."""
    plan = np.zeros((b, 3), dtype=np.int64)
    if crop_padding > 0:
        plan[:, 0] = rng.integers(0, 2 * crop_padding + 1, size=b)
        plan[:, 1] = rng.integers(0, 2 * crop_padding + 1, size=b)
    if hflip:
        plan[:, 2] = rng.random(b) < 0.5
    return plan


def epoch_plan(seed, epoch: int, n: int, n_original: int, hflip: bool, crop_padding: int) -> np.ndarray:
    """(n, 3): the plan of every image of a training source in one epoch, by its index: the
    originals' from one stream, the added images' from another, so an original image gets the
    same crop and flip in every arm of a cycle."""
    return np.concatenate([
        draw_plan(generator(seed, AUGMENT, epoch), n_original, hflip, crop_padding),
        draw_plan(generator(seed, ADDED_AUGMENT, epoch), n - n_original, hflip, crop_padding),
    ])


def augment(images: np.ndarray, plan: np.ndarray, crop_padding: int) -> np.ndarray:
    """Reference: crop after zero padding by ``crop_padding`` and flip each image as ``plan``
    (B, 3: dy, dx, flip) says, in numpy."""
    b, h, w, _ = images.shape
    p = crop_padding
    padded = np.zeros((b, h + 2 * p, w + 2 * p, 3), dtype=np.uint8)
    padded[:, p : p + h, p : p + w] = images
    rows = plan[:, 0:1] + np.arange(h)[None, :]
    cols = plan[:, 1:2] + np.arange(w)[None, :]
    out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = plan[:, 2].astype(bool)
    out[flip] = out[flip, :, ::-1]
    return out


def normalise(images: np.ndarray, mean, std) -> torch.Tensor:
    """Reference: uint8 (B, H, W, 3) to float32 (B, 3, H, W) with the model's mean and std, in numpy."""
    scale, shift = _affine(mean, std)
    x = images.astype(np.float32) * scale - shift
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def _affine(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """float32 scale and shift with (x / 255 - mean) / std == x * scale - shift."""
    scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float32))
    shift = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
    return scale.astype(np.float32), shift.astype(np.float32)


class DeviceTransform:
    """Crop, flip, uint8-to-float and normalisation of a whole uint8 batch on its device, with the
    same float32 operations as :func:`normalise`, in the same order (equal to the last bit)."""

    def __init__(self, mean, std, crop_padding: int = 0):
        scale, shift = _affine(mean, std)
        self.scale, self.shift, self.padding = torch.from_numpy(scale), torch.from_numpy(shift), crop_padding
        self._on = {}

    def _constants(self, device: torch.device):
        if device not in self._on:
            self._on[device] = (self.scale.to(device), self.shift.to(device))
        return self._on[device]

    def __call__(self, images: torch.Tensor, plan: torch.Tensor | None, channels_last: bool = False) -> torch.Tensor:
        """``images`` uint8 (B, H, W, 3) and ``plan`` (B, 3), or (B, 7) with each image's random
        erasing box (random_erasing.py) after the crop and flip, on one device: float32 (B, 3, H, W)."""
        if plan is not None:  # training: one gather, whatever the plan holds (reading it would sync)
            images = self._crop_flip(images, plan)
        scale, shift = self._constants(images.device)
        x = images.float() * scale - shift
        if plan is not None and plan.shape[1] > 3:  # after normalising, as torchvision's RandomErasing
            x = erase(x, plan[:, 3:7])
        x = x.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: already channels-last
        return x if channels_last else x.contiguous()

    def _crop_flip(self, images: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = images.shape
        p = self.padding
        if p > 0:
            padded = images.new_zeros((b, h + 2 * p, w + 2 * p, 3))
            padded[:, p : p + h, p : p + w] = images
        else:
            padded = images
        dy, dx, flip = plan[:, 0:1], plan[:, 1:2], plan[:, 2:3].bool()
        across = torch.arange(w, device=images.device)
        rows = dy + torch.arange(h, device=images.device)
        cols = dx + torch.where(flip, w - 1 - across, across)  # one gather crops and flips
        return padded[torch.arange(b, device=images.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


class BatchDataset:
    """Items are whole batches: ``dataset[(epoch, batch, indices)]`` is
    (uint8 images (B, H, W, 3), labels, augmentation plan (B, 3) or None when not training)."""

    def __init__(self, source: ArraySource, seed, train: bool, hflip=False, crop_padding=0, erasing=None):
        self.source, self.seed = source, stream_key(seed)
        self.train, self.hflip, self.crop_padding, self.erasing = train, hflip, crop_padding, erasing
        self._plans = (None, None)  # (epoch, its plan table): drawn once per epoch in each worker
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        epoch, batch, indices = key
        images, labels = self.source.gather(indices)
        plan = None
        if self.train:
            plan = torch.from_numpy(self._plan(epoch)[np.asarray(indices, dtype=np.int64)])
        return torch.from_numpy(images), torch.from_numpy(labels), plan

    def _plan(self, epoch: int) -> np.ndarray:
        """The epoch's plan table (n, 3), or (n, 7) with random erasing boxes: drawn once per epoch."""
        with self._lock:  # gather threads share it
            if self._plans[0] != epoch:
                n = len(self.source)
                plan = epoch_plan(self.seed, epoch, n, self.source.n_original, self.hflip, self.crop_padding)
                if self.erasing is not None:
                    h, w = self.source.parts[0][0].shape[1:3]
                    plan = np.concatenate([plan, epoch_boxes(self.seed, epoch, n, h, w, self.erasing)], axis=1)
                self._plans = (epoch, plan)
            return self._plans[1]


class GatheredBatches:
    """The uint8 batches (images, labels, plan) of ``dataset`` in the order ``sampler`` gives,
    gathered inline (``threads=0``) or by that many threads in this process, up to
    ``prefetch`` batches ahead, in order. Pinned for an asynchronous copy with ``pin_memory``."""

    def __init__(self, dataset: "BatchDataset", sampler: "EpochBatches", threads: int = 0,
                 pin_memory: bool = False, prefetch: int = 4):
        self.dataset, self.sampler, self.threads = dataset, sampler, threads
        self.pin_memory, self.prefetch = pin_memory, max(1, prefetch)
        self._pool = None

    def __len__(self) -> int:
        return len(self.sampler)

    def _load(self, key):
        images, labels, plan = self.dataset[key]
        rows = torch.from_numpy(np.asarray(key[2], dtype=np.int64))
        if self.pin_memory:
            images, labels, rows = images.pin_memory(), labels.pin_memory(), rows.pin_memory()
            plan = plan.pin_memory() if plan is not None else None
        return images, labels, plan, rows

    def __iter__(self):
        if self.threads == 0:
            yield from (self._load(key) for key in self.sampler)
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:  # kept across epochs, like persistent DataLoader workers
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gather")
        pending = deque()
        keys = iter(self.sampler)
        try:
            for key in keys:
                pending.append(self._pool.submit(self._load, key))
                if len(pending) >= self.prefetch * self.threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an early stop (an error in the step) leaves nothing running
            for future in pending:
                future.cancel()

    def __del__(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class DeviceBatches:
    """Iterates uint8 batches and yields (float32 images, labels) on ``device``, transformed
    there; copies are asynchronous from pinned memory. With ``with_rows`` also each image's index
    in the source (on the device), for the training-pass record."""

    def __init__(self, loader: GatheredBatches, transform: DeviceTransform, device, channels_last: bool,
                 with_rows: bool = False):
        self.loader, self.transform = loader, transform
        self.device, self.channels_last, self.with_rows = torch.device(device), channels_last, with_rows

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels, plan, rows in self.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if plan is not None:
                plan = plan.to(self.device, non_blocking=True)
            x = self.transform(images, plan, self.channels_last)
            yield (x, labels, rows.to(self.device, non_blocking=True)) if self.with_rows else (x, labels)


def epoch_order(seed, epoch: int, n: int, n_original: int) -> np.ndarray:
    """The order of a training source's images in one epoch: the originals (indices below
    ``n_original``) permuted by one stream, the added images permuted and placed among them by
    another, so the originals keep the same relative order in every arm of a cycle."""
    order = generator(seed, ORDER, epoch).permutation(n_original)
    if n == n_original:
        return order
    rng = generator(seed, ADDED_ORDER, epoch)
    added = n_original + rng.permutation(n - n_original)
    slots = np.zeros(n, dtype=bool)
    slots[rng.choice(n, n - n_original, replace=False)] = True
    full = np.empty(n, dtype=np.int64)
    full[slots], full[~slots] = added, order
    return full


class EpochBatches(torch.utils.data.Sampler):
    """Yields (epoch, batch, indices): a fresh order per epoch when shuffling (epoch_order)."""

    def __init__(self, n: int, batch_size: int, seed, shuffle: bool, drop_last: bool = False,
                 n_original: int | None = None):
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.n_original = n if n_original is None else n_original
        self.seed = stream_key(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = epoch_order(self.seed, self.epoch, self.n, self.n_original) if self.shuffle else np.arange(self.n)
        for b in range(len(self)):
            yield self.epoch, b, order[b * self.batch_size : (b + 1) * self.batch_size]


def make_loader(source: ArraySource, mean, std, batch_size: int, seed=0, train: bool = False,
                hflip: bool = False, crop_padding: int = 0, num_workers: int = 0, pin_memory: bool = False,
                device="cpu", channels_last: bool = False, with_rows: bool = False, erasing: dict | None = None):
    """Batches of ``source`` as float32 (B, 3, H, W) and labels on ``device`` (channels-last
    memory with ``channels_last``), and the sampler (call ``sampler.set_epoch`` each epoch);
    with ``with_rows`` each batch also carries its images' indices in ``source``; with ``erasing``
    (random_erasing.settings_of) training images are randomly erased after the crop and flip.
    ``num_workers`` gather threads prepare batches ahead (0: in the loop itself); the batches
    do not depend on it."""
    dataset = BatchDataset(source, seed, train, hflip, crop_padding, erasing if train else None)
    # Drop a last batch of one when training: BatchNorm cannot normalise a single sample.
    drop_last = train and len(source) % batch_size == 1
    sampler = EpochBatches(len(source), batch_size, seed, shuffle=train, drop_last=drop_last,
                           n_original=source.n_original)
    loader = GatheredBatches(dataset, sampler, num_workers, pin_memory)
    return DeviceBatches(loader, DeviceTransform(mean, std, crop_padding if train else 0), device, channels_last,
                         with_rows), sampler
