"""The log line that says how long a stage's own work took (imports and process start excluded),
and how much of it was start-up and wind-down.

``bench/run.py`` reads these lines from a finished run's logs to split each job's wall time into
the stage's own work and the overhead around it. A stage marks the end of its start-up
(:func:`startup_done`: its checkpoint loaded and on the device, its CAM built)
where its passes over the images begin, and the end of those passes (:func:`images_done`) where
only the work that does not grow with the images is left (a 1,000-class confusion matrix, a
checkpoint written, a figure drawn). The time between the marks is its images'
(``bench/scaling.py`` divides it by the number of images, and prints the start-up and wind-down
at each size, which must not grow either). A stage that marks neither: all its time is its images'.
"""

from __future__ import annotations

import functools
import logging
import re
import time

log = logging.getLogger("proxyattention.stage")

PATTERN = re.compile(r"stage (\w+) took ([0-9.]+) s")

RECORDS: list[dict] = []  # this process's finished stages: {"stage", "seconds", "startup", "winddown"}
_starts: list[list] = []  # the running stages' [start, end of start-up, end of images] (None: unmarked), innermost last


def startup_done() -> None:
    """Mark the end of the running stage's start-up: what it does from here grows with its images.
    Only the first mark of a stage counts."""
    if _starts and _starts[-1][1] is None:
        _starts[-1][1] = time.perf_counter()


def images_done() -> None:
    """Mark the end of the running stage's passes over its images: what it does from here (its
    wind-down) does not grow with them. Only the first mark of a stage counts."""
    if _starts and _starts[-1][2] is None:
        _starts[-1][2] = time.perf_counter()


def timed_stage(fn):
    """Log ``stage NAME took S s`` when ``fn`` returns (``... (start-up A s, wind-down W s)`` with
    the parts it marked) and add it to :data:`RECORDS`; ``stage NAME stopped after S s (...)`` when it
    raises or is interrupted, which no cost counts (a failed or Ctrl-C'd attempt is not the stage's
    time: the rerun's is)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        _starts.append([start, None, None])
        try:
            result = fn(*args, **kwargs)
        except BaseException as err:
            log.info("stage %s stopped after %.3f s (%s)", fn.__name__, time.perf_counter() - start,
                     type(err).__name__)
            raise
        finally:
            _, started, ended = _starts.pop()
        end = time.perf_counter()
        seconds = end - start
        startup = 0.0 if started is None else started - start
        winddown = 0.0 if ended is None else end - ended
        RECORDS.append({"stage": fn.__name__, "seconds": seconds, "startup": startup, "winddown": winddown})
        parts = ([f"start-up {startup:.3f} s"] if started is not None else []) + (
            [f"wind-down {winddown:.3f} s"] if ended is not None else [])
        if parts:
            log.info("stage %s took %.3f s (%s)", fn.__name__, seconds, ", ".join(parts))
        else:
            log.info("stage %s took %.3f s", fn.__name__, seconds)
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
