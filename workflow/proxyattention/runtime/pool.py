"""A thread pool's ``map`` with a bounded number of tasks in flight.

``ThreadPoolExecutor.map`` submits every task before yielding the first result: one Future (with its
lock and condition) per item, held until the map ends, so a stage that maps over every image of a
dataset keeps a few hundred bytes per image for the whole stage. ``bounded_map`` keeps at most
``window`` tasks submitted and not yet consumed, and yields results in order, as ``map`` does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int = 256) -> Iterator[R]:
    """``pool.map(fn, items)`` with at most ``window`` tasks in flight; results in the items' order.
    An exception raised by a task is raised when its result is reached (as with ``map``); the tasks
    still queued are cancelled."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
