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

from proxyattention.runtime import warm

# A stand-in for Snakemake's copy of a rule script: hand over to the server, then do the work.
JOB = """
import json, os, sys, time
sys.path.insert(0, {workflow!r})
from proxyattention.runtime.warm import in_warm_child, run_in_server
run_in_server()
print(json.dumps({{"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv, "marker": os.environ.get("MARKER"),
                  "torch_loaded": "torch" in sys.modules, "warm": in_warm_child()}}), flush=True)
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


# A server whose first fork fails (EAGAIN under a process limit), or whose children cannot start
# a thread: patched in the server process itself, before it serves.
FAULTY_SERVER = """
import errno, os, sys, threading
sys.path.insert(0, {workflow!r})
fault = sys.argv[3]
if fault == "fork":
    real, calls = os.fork, []
    def fork():
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return real()
    os.fork = fork
if fault == "thread":
    def start(self):
        raise RuntimeError("can't start new thread")
    threading.Thread.start = start
from proxyattention.runtime.warm import serve
serve(sys.argv[1], int(sys.argv[2]), preload=("json",))
"""


def faulty_server(tmp_path, fault: str):
    socket_path = str(tmp_path / "s" / "socket")
    os.makedirs(os.path.dirname(socket_path), mode=0o700)
    process = subprocess.Popen([sys.executable, "-c", FAULTY_SERVER.format(workflow=str(ROOT / "workflow")),
                                socket_path, str(os.getpid()), fault], stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: os.path.exists(socket_path))
    return process, socket_path


def test_a_malformed_request_is_answered_and_the_server_keeps_serving(server, tmp_path):
    """#27.6: a request without its keys ({"script": "x"}) raised KeyError in the server, which
    stopped it: every running job then died with "the server went away"."""
    import socket

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(server.socket_path)
    warm._send_request(conn, {"script": "x"})
    reply = json.loads(conn.makefile("rb").readline())
    conn.close()
    assert reply["status"] == "refused" and "malformed" in reply["reason"]
    proc = job(tmp_path, "ok", env={warm.SOCKET_ENV: server.socket_path})
    assert proc.returncode == 0 and json.loads(proc.stdout)["warm"], proc.stderr


def test_a_failed_fork_answers_that_request_and_the_job_runs_cold(tmp_path):
    process, socket_path = faulty_server(tmp_path, "fork")
    try:
        first = job(tmp_path, "ok", env={warm.SOCKET_ENV: socket_path})
        assert first.returncode == 0, first.stderr
        assert "not used (the server cannot fork" in first.stderr and "Resource temporarily" in first.stderr
        assert not json.loads(first.stdout)["warm"]
        second = job(tmp_path, "ok", env={warm.SOCKET_ENV: socket_path})
        assert second.returncode == 0 and json.loads(second.stdout)["warm"], second.stderr
    finally:
        process.terminate()
        process.wait(10)


def test_a_child_that_cannot_start_its_watcher_says_why_in_the_job_log(tmp_path):
    """The child's job-watching thread failed to start: the job exited 1 with nothing in its log."""
    process, socket_path = faulty_server(tmp_path, "thread")
    try:
        proc = job(tmp_path, "ok", env={warm.SOCKET_ENV: socket_path})
        assert proc.returncode == 1 and "can't start new thread" in proc.stderr, proc.stderr
    finally:
        process.terminate()
        process.wait(10)


# A stand-in server run by another user: it answers "started", then "exited 0", for any request,
# and records the environment it was sent (a job's tokens).
IMPOSTOR = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1)
open(sys.argv[2], "w").write("listening")
conn, _ = s.accept()
data = conn.recv(1 << 20)
conn.sendall(b'{"status": "started", "pid": 1}\\n{"status": "exited", "code": 0}\\n')
open(sys.argv[2], "w").write("got " + str(len(data)))
"""


def other_user():
    import pwd
    import shutil

    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root and runuser to act as a second user")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no second user (nobody) on this machine")


def impostor(folder, socket_name="socket"):
    """Start IMPOSTOR as nobody, listening in ``folder`` (nobody's own folder under /tmp)."""
    done = folder / "state"
    python = "/usr/bin/python3"  # the system's: nobody may not enter this venv's folder
    if not os.access(python, os.X_OK):
        pytest.skip("no system python3 for the second user")
    proc = subprocess.Popen(["runuser", "-u", "nobody", "--", python, "-c", IMPOSTOR, str(folder / socket_name),
                             str(done)], start_new_session=True)  # a group of its own: killed with runuser's child
    assert wait_until(lambda: done.exists() and done.read_text() == "listening")
    return proc, done


def test_a_job_refuses_a_socket_folder_another_user_owns(tmp_path):
    """#27.7: the job never checked who owns the server socket: where others can write the temp
    folder, another user could stand in for the server, receive the job's environment and report
    success for a stage that failed."""
    import tempfile

    user = other_user()
    folder = tempfile.mkdtemp(prefix="pa-impostor-")
    os.chown(folder, user.pw_uid, user.pw_gid)
    from pathlib import Path

    proc, done = impostor(Path(folder))
    try:
        ran = job(tmp_path, "ok", env={warm.SOCKET_ENV: os.path.join(folder, "socket")})
        assert ran.returncode == 0 and not json.loads(ran.stdout)["warm"]
        assert "not this user's" in ran.stderr, ran.stderr
        assert done.read_text() == "listening"  # it was never sent the request
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run(["rm", "-rf", folder])


def test_a_job_refuses_a_server_another_user_runs(tmp_path):
    """The folder is this user's, the listening process is not (its socket moved in): the job
    checks the peer's uid (SO_PEERCRED) and runs cold without sending its request."""
    import tempfile
    from pathlib import Path

    user = other_user()
    theirs = tempfile.mkdtemp(prefix="pa-impostor-")
    os.chown(theirs, user.pw_uid, user.pw_gid)
    proc, done = impostor(Path(theirs))
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    try:
        os.rename(os.path.join(theirs, "socket"), ours / "socket")
        ran = job(tmp_path, "ok", env={warm.SOCKET_ENV: str(ours / "socket")})
        assert ran.returncode == 0 and not json.loads(ran.stdout)["warm"]
        assert "run by another user" in ran.stderr, ran.stderr
        time.sleep(0.5)
        assert done.read_text() in ("listening", "got 0"), done.read_text()  # nothing of the job was sent
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run(["rm", "-rf", theirs])


PROBE_SERVER = """
import os, sys
sys.path.insert(0, {workflow!r}); sys.path.insert(0, {probe!r})
from proxyattention.runtime.warm import serve
serve(sys.argv[1], int(sys.argv[2]), preload=("torch", "cuda_probe"))
"""

CHILD_FORK_STATE = """
import json, sys
sys.path.insert(0, {workflow!r})
from proxyattention.runtime.warm import in_warm_child, run_in_server
run_in_server()
import torch
print(json.dumps({{"warm": in_warm_child(), "bad_fork": torch.cuda._is_in_bad_fork()}}), flush=True)
"""


def test_no_warm_child_is_ever_in_a_bad_cuda_fork(tmp_path):
    """#27.8: the server's guard checked only torch.cuda.is_initialized(); a preloaded module calling
    torch.cuda.is_available() leaves that False yet puts every forked child in a "bad fork" (CUDA
    unusable). Here a preloaded module does exactly that: no job may then run in a bad fork (on this
    CPU machine the server refuses to serve and the job runs cold)."""
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "cuda_probe.py").write_text("import torch\ntorch.cuda.is_available()\n")
    socket_path = str(tmp_path / "s" / "socket")
    os.makedirs(os.path.dirname(socket_path), mode=0o700)
    server = subprocess.Popen([sys.executable, "-c", PROBE_SERVER.format(workflow=str(ROOT / "workflow"),
                                                                         probe=str(tmp_path / "probe")),
                               socket_path, str(os.getpid())], stderr=subprocess.PIPE, text=True)
    try:
        server.wait(120)  # it must not serve: on this machine the device-count call poisons forks
        assert "asked CUDA for its devices" in server.stderr.read()
        (tmp_path / "job.py").write_text(CHILD_FORK_STATE.format(workflow=str(ROOT / "workflow")))
        ran = subprocess.run([sys.executable, str(tmp_path / "job.py")], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, warm.SOCKET_ENV: socket_path}, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout) == {"warm": False, "bad_fork": False}
    finally:
        server.kill()


def test_the_real_server_s_children_can_use_cuda(server, tmp_path):
    """The server as the workflow starts it (NVML-based CUDA checks in its environment, the usual
    preload): its children are not in a bad fork."""
    (tmp_path / "job.py").write_text(CHILD_FORK_STATE.format(workflow=str(ROOT / "workflow")))
    ran = subprocess.run([sys.executable, str(tmp_path / "job.py")], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, warm.SOCKET_ENV: server.socket_path}, timeout=120)
    assert json.loads(ran.stdout) == {"warm": True, "bad_fork": False}, ran.stderr
    environ = open(f"/proc/{server.process.pid}/environ", "rb").read().split(b"\0")
    assert b"PYTORCH_NVML_BASED_CUDA_CHECK=1" in environ


def test_a_server_whose_parent_was_killed_removes_its_socket_folder(tmp_path):
    """#42 (smaller): after `kill -9` of Snakemake an empty pa-warm-* folder stayed in the temp
    folder. The server, which exits when its parent is gone, now removes it."""
    starter = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'workflow')!r})\n"
        "from proxyattention.runtime import warm\n"
        f"server = warm.start_server({str(tmp_path / 'warm.log')!r}, extra_path={str(ROOT / 'workflow')!r})\n"
        "print(server.folder, server.process.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    folder, server_pid = starter.stdout.readline().split()
    assert os.path.isdir(folder)
    starter.kill()  # SIGKILL: no stop(), no cleanup of its own
    starter.wait()
    assert wait_until(lambda: not alive(int(server_pid)), 60)
    assert not os.path.exists(folder)
