"""What every benchmark shares: medians of repeated timings, side by side, and the device."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "workflow" / "data" / "fashion_mnist_demo"


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    return median_times([fn], repeats, warmup)[0]


def median_times(fns, repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds of each of ``fns``, timed in turn within each repeat (A B A B ...), so a slow
    spell of a shared machine falls on all of them rather than on one."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            out.append(_timed(fn))
    return [statistics.median(t) for t in times]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
