"""Local GPU pinning: concurrent jobs get distinct CUDA_VISIBLE_DEVICES (simulated GPU count)."""

import subprocess
import sys


def test_concurrent_jobs_get_distinct_gpus_and_wait_for_a_free_one(tmp_path):
    script = (
        "import os, sys, time; from proxyattention.scripting import pin_local_gpu; "
        f"gpu = pin_local_gpu(lock_dir={str(tmp_path)!r}, poll_seconds=0.1); "
        "print(gpu, time.time(), flush=True); time.sleep(float(sys.argv[1]))"
    )
    env = {"PA_LOCAL_GPUS": "2", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", script, "1.5"], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    out = [p.communicate()[0].split() for p in procs]
    gpus = sorted(o[0] for o in out)
    starts = sorted(float(o[1]) for o in out)
    assert gpus.count("0") + gpus.count("1") == 3 and set(gpus) == {"0", "1"}
    assert starts[2] - starts[0] > 1.0, "the third job waited for a GPU to be freed"


def test_scheduler_assignment_is_kept(monkeypatch, tmp_path):
    from proxyattention.scripting import pin_local_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("PA_LOCAL_GPUS", "4")
    assert pin_local_gpu(lock_dir=str(tmp_path)) is None
