"""Glue for Snakemake ``script:`` files: logging to the rule's log, thread count."""

from __future__ import annotations

import logging
import sys

from .warm import run_in_server


JOB_CONFIG: dict = {}  # the running job's config (setup), for what a stage reads outside its settings


def job_setting(*keys, default=None):
    """A value of the running job's config that changes no output a later job reads, so it is kept
    out of the stage's settings (params; a change would rerun every such job) and out of the
    scripts (Snakemake reruns a script rule's jobs when its script file is newer): e.g.
    ``training.epoch_sample``. ``default`` outside a Snakemake job (a test, a bench)."""
    node = JOB_CONFIG
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def setup(snakemake) -> None:
    """Send stderr and logging to the rule's log file, pin a local GPU, hand the job to a warm-start
    server if one runs (this process then exits with the job's status), use the rule's threads;
    keep the job's config for job_setting."""
    JOB_CONFIG.clear()
    JOB_CONFIG.update(snakemake.config)
    if snakemake.log:
        stream = open(snakemake.log[0], "a", buffering=1)
        sys.stderr = stream
        sys.stdout = stream
        keep_log_of_failed_attempt(snakemake.log[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    remove_temporaries_on_sigterm()
    torch_rule = snakemake.rule in TORCH_RULES
    if torch_rule:
        gpu = pin_local_gpu()  # here, not in the warm-start child: this process holds the lock
        if gpu is not None:
            logging.info("CUDA_VISIBLE_DEVICES=%s (local GPU slot)", gpu)
    run_in_server()
    if torch_rule:
        import torch

        torch.set_num_threads(max(1, int(snakemake.threads)))


def keep_log_of_failed_attempt(log_path: str) -> None:
    """Snakemake removes a job's log before it runs the job again, so the log of an attempt that
    failed, was interrupted (Ctrl-C, SIGTERM) or killed was lost to the rerun. The log gets a second
    name for this attempt, ``<log>.attempt-<UTC time>`` (a hard link: the same file, written as it
    is written, traceback included); the attempt removes that name when it ends without an error,
    so what is left beside a log are the attempts that did not finish."""
    import atexit
    import os
    import time

    kept = f"{log_path}.attempt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
    try:
        os.link(log_path, kept)
    except OSError:  # a filesystem without hard links: nothing kept, as before
        return
    failed = []
    previous = sys.excepthook

    def excepthook(kind, value, tb):
        failed.append(kind)
        previous(kind, value, tb)

    sys.excepthook = excepthook

    def finished() -> None:
        if not failed:
            try:
                os.unlink(kept)
            except OSError:
                pass

    atexit.register(finished)


def remove_temporaries_on_sigterm() -> None:
    """On SIGTERM (SLURM's time limit or preemption, Snakemake's cancel) remove the temporaries
    being written, then die of SIGTERM as before; a later attempt also removes what a SIGKILL
    left (atomic.atomic_path)."""
    import os
    import signal

    def terminated(signum, frame):
        from ..files.atomic import remove_live_temporaries

        remove_live_temporaries()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, terminated)


# Only these rules run a model (each asks for a local GPU slot, ``gpu=1``, and is pinned to its
# GPU here); the others must not pay seconds to import torch.
TORCH_RULES = {"finetune", "retrain", "find_misclassified", "compute_cams", "evaluate", "measure", "faithfulness",
               "agreement"}


_held_locks = []  # kept open for the life of the process: closing a file releases its lock


def local_gpu_count() -> int:
    """GPUs on this machine: $PA_LOCAL_GPUS, else what nvidia-smi lists, else 0."""
    import os
    import shutil
    import subprocess

    if "PA_LOCAL_GPUS" in os.environ:
        return int(os.environ["PA_LOCAL_GPUS"])
    if not shutil.which("nvidia-smi"):
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return sum(line.startswith("GPU ") for line in out.splitlines())


LOCK_BASE = "/tmp"  # the GPU lock folder's parent: the same for every job of a user, whatever its environment


def gpu_lock_dir(base: str = LOCK_BASE) -> str:
    """This user's private folder of GPU lock files: $PA_GPU_LOCK_DIR, else
    ``<base>/proxyattention-gpus-<uid>``, from the uid alone: a job that sees $XDG_RUNTIME_DIR
    or $TMPDIR and one that does not must share the locks, or both take GPU 0.

    Refuses a folder that is a symlink, not this user's, or open to others: another user
    could hold the locks (jobs would wait forever) or plant links in it.
    """
    import os
    import stat

    path = os.environ.get("PA_GPU_LOCK_DIR") or os.path.join(base, f"proxyattention-gpus-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
            or info.st_mode & 0o077:
        raise RuntimeError(f"GPU lock folder {path} must be a folder of this user that only this user can open "
                           f"(mode 0700, not a link); remove it or set PA_GPU_LOCK_DIR to such a folder")
    return path


def pin_local_gpu(lock_dir: str | None = None, poll_seconds: float = 2.0) -> str | None:
    """Give this job one local GPU of its own through CUDA_VISIBLE_DEVICES.

    Snakemake limits how many GPU jobs run at once (``--resources gpu=N``) but
    does not say which GPU a job gets. Each job takes the first free lock of
    ``gpu-<id>.lock`` among the GPUs it may use, and keeps it until it exits; with
    more jobs than GPUs, a job waits for a free one. The GPUs it may use are those
    of CUDA_VISIBLE_DEVICES when the user set it (``CUDA_VISIBLE_DEVICES=2,3``
    pins each job to 2 or 3), else every GPU of the machine. Does nothing inside a
    SLURM job (the scheduler chose), with one or no GPU to choose from, or without
    GPUs. Must run before CUDA is initialised.
    """
    import fcntl
    import os
    import re
    import time

    if os.environ.get("SLURM_JOB_ID") and "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        devices = [str(i) for i in range(local_gpu_count())]
    if len(devices) <= 1:
        return None
    lock_dir = lock_dir or gpu_lock_dir()
    while True:
        for device in devices:
            path = os.path.join(lock_dir, f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock")
            # no truncation, and never through a link someone planted
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _held_locks.append(fd)
            os.environ["CUDA_VISIBLE_DEVICES"] = device
            return device
        time.sleep(poll_seconds)
