"""Warm start: a job handed to the server runs as a fork with the job's argv, folder, environment and
standard streams, reports its exit status, and never outlives the job process or the server."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from proxyattention import warm

# A stand-in for Snakemake's copy of a rule script: hand over to the server, then do the work.
JOB = """
import json, os, sys, time
sys.path.insert(0, {workflow!r})
from proxyattention.warm import run_in_server
run_in_server()
print(json.dumps({{"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv, "marker": os.environ.get("MARKER"),
                  "torch_loaded": "torch" in sys.modules}}), flush=True)
mode = sys.argv[1]
if mode == "fail":
    raise RuntimeError("stage failed on purpose")
if mode == "exit":
    sys.exit(3)
if mode == "loader":  # DataLoader workers are forked from the warm-start child
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    loader = DataLoader(TensorDataset(torch.arange(64.0)), batch_size=4, num_workers=2, persistent_workers=True)
    print(json.dumps({{"sum": sum(float(batch[0].sum()) for batch in loader)}}), flush=True)
if mode == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warm")
    started = warm.start_server(str(folder / "warm_start.log"), extra_path=str(ROOT / "workflow"))
    assert started is not None, (folder / "warm_start.log").read_text()
    yield started
    started.stop()
    assert warm.SOCKET_ENV not in os.environ


def job(tmp_path, *args, env=None, wait=True):
    script = tmp_path / "job.py"
    script.write_text(JOB.format(workflow=str(ROOT / "workflow")))
    env = {**os.environ, "MARKER": "from-the-job", **(env or {})}
    command = [sys.executable, str(script), *args]
    if not wait:
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too: it only waits to be reaped
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def wait_until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_job_runs_in_a_fork_with_its_own_folder_argv_and_environment(server, tmp_path):
    proc = job(tmp_path, "ok")
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["torch_loaded"], "the child inherits the server's imports"
    assert seen["cwd"] == str(tmp_path)
    assert seen["argv"] == [str(tmp_path / "job.py"), "ok"]
    assert seen["marker"] == "from-the-job"


def test_dataloader_workers_run_inside_a_warm_child(server, tmp_path):
    proc = job(tmp_path, "loader")
    assert proc.returncode == 0, proc.stderr
    first, second = map(json.loads, proc.stdout.splitlines())
    assert first["torch_loaded"] and second["sum"] == sum(range(64))


def test_exit_status_and_traceback_reach_the_job(server, tmp_path):
    exited = job(tmp_path, "exit")
    assert exited.returncode == 3
    failed = job(tmp_path, "fail")
    assert failed.returncode == 1
    assert "RuntimeError: stage failed on purpose" in failed.stderr


def test_killing_the_job_kills_its_child(server, tmp_path):
    pid_file = tmp_path / "child.pid"
    proc = job(tmp_path, "sleep", str(pid_file), wait=False)
    assert wait_until(pid_file.exists)
    child = int(pid_file.read_text())
    assert child != proc.pid and alive(child)
    proc.send_signal(signal.SIGKILL)  # what happens to a job when Snakemake itself is killed
    proc.wait()
    assert wait_until(lambda: not alive(child)), "the child outlived its job"


def test_without_a_server_the_job_runs_in_its_own_process(tmp_path):
    missing = job(tmp_path, "ok", env={warm.SOCKET_ENV: str(tmp_path / "no-such-socket")})
    assert missing.returncode == 0, missing.stderr
    assert not json.loads(missing.stdout)["torch_loaded"]
    assert "not reachable" in missing.stderr


def test_inside_slurm_or_another_python_the_job_runs_cold(server, tmp_path):
    slurm = job(tmp_path, "ok", env={"SLURM_JOB_ID": "42"})
    assert slurm.returncode == 0 and not json.loads(slurm.stdout)["torch_loaded"]
    venv = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    script = tmp_path / "job.py"
    other = subprocess.run([str(venv / "bin" / "python"), str(script), "ok"], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "workflow")})
    assert other.returncode == 0, other.stderr
    assert "not used (the job runs" in other.stderr


def test_stopping_the_server_ends_running_children(tmp_path):
    started = warm.start_server(str(tmp_path / "warm_start.log"), extra_path=str(ROOT / "workflow"))
    try:
        pid_file = tmp_path / "child.pid"
        proc = job(tmp_path, "sleep", str(pid_file), wait=False)
        assert wait_until(pid_file.exists, 60)
        child = int(pid_file.read_text())
        started.stop()
        assert proc.wait(timeout=30) != 0
        assert wait_until(lambda: not alive(child))
    finally:
        started.stop()
    assert not os.path.exists(started.folder)
