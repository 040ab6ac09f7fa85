"""Glue for Snakemake ``script:`` files: logging to the rule's log, thread count."""

from __future__ import annotations

import logging
import sys

from .warm import run_in_server


def setup(snakemake) -> None:
    """Send stderr and logging to the rule's log file, pin a local GPU, hand the job to a warm-start
    server if one runs (this process then exits with the job's status), use the rule's threads."""
    if snakemake.log:
        stream = open(snakemake.log[0], "a", buffering=1)
        sys.stderr = stream
        sys.stdout = stream
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch_rule = snakemake.rule in TORCH_RULES
    if torch_rule:
        gpu = pin_local_gpu()  # here, not in the warm-start child: this process holds the lock
        if gpu is not None:
            logging.info("CUDA_VISIBLE_DEVICES=%s (local GPU slot)", gpu)
    run_in_server()
    if torch_rule:
        import torch

        torch.set_num_threads(max(1, int(snakemake.threads)))


# Only these rules run a model; the others must not pay seconds to import torch.
TORCH_RULES = {"finetune", "retrain", "find_misclassified", "compute_cams", "evaluate"}


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


def pin_local_gpu(lock_dir: str | None = None, poll_seconds: float = 2.0) -> str | None:
    """Give this job one local GPU of its own through CUDA_VISIBLE_DEVICES.

    Snakemake limits how many GPU jobs run at once (``--resources gpu=N``) but
    does not say which GPU a job gets. Each job takes the first free lock file of
    ``gpu-<i>.lock`` and keeps it until it exits; with more jobs than GPUs, a job
    waits for a free one. Does nothing where a scheduler (SLURM) already set
    CUDA_VISIBLE_DEVICES, or without GPUs. Must run before CUDA is initialised.
    """
    import fcntl
    import os
    import tempfile
    import time

    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    count = local_gpu_count()
    if count == 0:
        return None
    lock_dir = lock_dir or os.environ.get("PA_GPU_LOCK_DIR", os.path.join(tempfile.gettempdir(), "proxyattention-gpus"))
    os.makedirs(lock_dir, exist_ok=True)
    while True:
        for i in range(count):
            handle = open(os.path.join(lock_dir, f"gpu-{i}.lock"), "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _held_locks.append(handle)
            os.environ["CUDA_VISIBLE_DEVICES"] = str(i)
            return str(i)
        time.sleep(poll_seconds)
