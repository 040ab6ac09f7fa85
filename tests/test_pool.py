"""bounded_map: a thread pool's map in order, with a bounded number of tasks in flight."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxyattention.runtime.pool import bounded_map


def test_results_come_in_order_with_at_most_window_tasks_submitted_and_not_consumed():
    submitted, consumed, most = [0], [0], [0]
    lock = threading.Lock()

    def work(i):
        time.sleep(0.001 * (i % 3))  # finishing out of order
        return i * i

    def items():
        for i in range(100):
            with lock:
                submitted[0] += 1
                most[0] = max(most[0], submitted[0] - consumed[0])
            yield i

    got = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for value in bounded_map(pool, work, items(), window=8):
            got.append(value)
            consumed[0] += 1
    assert got == [i * i for i in range(100)]
    assert most[0] == 8  # ThreadPoolExecutor.map would have had all 100 submitted


def test_a_failing_task_raises_at_its_place_and_cancels_what_is_queued():
    ran = []

    def work(i):
        if i == 3:
            raise ValueError("image 3 is bad")
        time.sleep(0.01)
        ran.append(i)
        return i

    with ThreadPoolExecutor(max_workers=1) as pool:
        results = bounded_map(pool, work, range(1000), window=4)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="image 3 is bad"):
            next(results)
    assert max(ran) < 10  # the rest were never submitted, or cancelled


def test_window_must_be_positive():
    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(ValueError, match="window"):
        list(bounded_map(pool, abs, [1], window=0))
