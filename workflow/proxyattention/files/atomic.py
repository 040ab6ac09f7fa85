"""Atomic file writing: a killed stage never leaves a half file under a final name."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffix so libraries that pick a format
    from the extension (OpenCV, numpy, safetensors) still work. On an exception
    the temporary file is removed and the final name is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.stem)}.{'?' * 8}.tmp{glob.escape(path.suffix)}*"):
        stale.unlink(missing_ok=True)  # left by an attempt that was killed (SIGKILL cannot be caught)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with live(tmp):
            yield tmp
        # mkstemp makes the file private (0600), and a writer may have replaced it with a file of its
        # own (safetensors does): outputs get the usual permissions, as open() would give.
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)  # the bytes reach the disk before the name does: a crash leaves the old file or the new
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        with live(tmp):
            yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_live: set[Path] = set()  # temporaries being written now, removed if the stage is terminated


@contextlib.contextmanager
def live(path: Path) -> Iterator[Path]:
    """Mark ``path`` as a temporary being written, for :func:`remove_live_temporaries`."""
    _live.add(path)
    try:
        yield path
    finally:
        _live.discard(path)


def remove_live_temporaries() -> None:
    """Remove every temporary being written (a SIGTERM handler's work: SLURM's time limit and
    preemption, Snakemake's cancel); safe to call from a signal handler or another thread."""
    for path in list(_live):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
