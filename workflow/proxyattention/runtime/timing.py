"""The log line that says how long a stage's own work took (imports and process start excluded),
and how much of it was start-up.

``bench/run.py`` reads these lines from a finished run's logs to split each job's wall time into
the stage's own work and the overhead around it. A stage with a model marks the end of its start-up
(:func:`startup_done`: its checkpoint loaded and on the device, its CAM built) where its passes
over the images begin; the rest of its time is its images' (``bench/scaling.py`` divides it by the
number of images). A stage without a model marks none: all its time is its images'.
"""

from __future__ import annotations

import functools
import logging
import re
import time

log = logging.getLogger("proxyattention.stage")

PATTERN = re.compile(r"stage (\w+) took ([0-9.]+) s")

RECORDS: list[dict] = []  # this process's finished stages: {"stage", "seconds", "startup"}
_starts: list[list] = []  # the running stages' [start, end of start-up or None], innermost last


def startup_done() -> None:
    """Mark the end of the running stage's start-up: what it does from here grows with its images.
    Only the first mark of a stage counts."""
    if _starts and _starts[-1][1] is None:
        _starts[-1][1] = time.perf_counter()


def timed_stage(fn):
    """Log ``stage NAME took S s`` when ``fn`` returns (``... (start-up A s)`` when it marked its
    start-up's end) and add it to :data:`RECORDS`; ``stage NAME stopped after S s (...)`` when it
    raises or is interrupted, which no cost counts (a failed or Ctrl-C'd attempt is not the stage's
    time: the rerun's is)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        _starts.append([start, None])
        try:
            result = fn(*args, **kwargs)
        except BaseException as err:
            log.info("stage %s stopped after %.3f s (%s)", fn.__name__, time.perf_counter() - start,
                     type(err).__name__)
            raise
        finally:
            marked = _starts.pop()[1]
        seconds = time.perf_counter() - start
        startup = 0.0 if marked is None else marked - start
        RECORDS.append({"stage": fn.__name__, "seconds": seconds, "startup": startup})
        if marked is None:
            log.info("stage %s took %.3f s", fn.__name__, seconds)
        else:
            log.info("stage %s took %.3f s (start-up %.3f s)", fn.__name__, seconds, startup)
        return result

    return wrapper


def stage_seconds(log_text: str) -> float:
    """Sum of the stage times logged in one log file's text."""
    return sum(float(seconds) for _, seconds in PATTERN.findall(log_text))


def last_stage_seconds(log_path, stage: str) -> float:
    """The time the last run of ``stage`` logged in ``log_path`` (a job's log; a rerun may have
    appended to it). Raises ValueError naming the log when it holds no such line."""
    from pathlib import Path

    times = [float(s) for name, s in PATTERN.findall(Path(log_path).read_text()) if name == stage]
    if not times:
        raise ValueError(f"{log_path}: no 'stage {stage} took' line; the job that wrote it did not finish")
    return times[-1]
