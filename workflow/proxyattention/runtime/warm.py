"""Warm start: each script job runs in a fresh fork of a process that has already imported torch.

Every stage is its own process (the process boundary frees GPU memory; a failed stage is rerun
alone), but importing torch and timm costs about 4 s per process on a laptop CPU, more than many
demo-sized stages compute. With ``warm_start: true``, the Snakefile's ``onstart`` hook starts one
server per local workflow run (:func:`start_server`). The server imports the stage code once and
listens on a Unix socket in a private (0700) folder. Each script job, first thing in
:func:`proxyattention.runtime.scripting.setup`, sends the server its script file, argv, working folder,
environment and stdin/stdout/stderr (:func:`run_in_server`); the server forks, and the child runs
that very script file with those settings. The job process waits and exits with the child's status.

The child is still one process per stage: it exits when the stage ends; it is killed when the job
process dies (Snakemake cancelled the job) or when the server dies. A job runs cold, in its own
process as usual, when no server is configured or reachable, inside a SLURM job (a fork of a server
outside the job would escape the job's resource limits), or when the job uses another Python than
the server (``--use-conda``). This module only imports the standard library: the job side must
stay cheap to import.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import sys

SOCKET_ENV = "PA_WARM_SOCKET"

# What a server imports once for all its children; CUDA is never initialised here (it could not be
# used in a forked child otherwise).
PRELOAD = (
    "numpy", "pandas", "cv2", "torch", "timm", "pytorch_grad_cam", "snakemake.script",
    *(f"proxyattention.stages.{stage}" for stage in (
        "prepare", "prepare_masks", "train", "find_misclassified", "compute_cams", "mask_and_save", "evaluate",
        "decide_cycle", "aggregate", "figures", "from_record", "agreement", "faithfulness")),
)

log = logging.getLogger(__name__)

_in_child = False  # set in a forked child, so the script it runs does not delegate again


def in_warm_child() -> bool:
    """Whether this process is a warm-start child (a fork of the server), not a fresh process."""
    return _in_child


# Messages: the job sends one request (a 4-byte length, its three standard fds attached, then JSON);
# the server answers with JSON lines: {"status": "refused"|"started"|"exited", ...}.

REQUEST_KEYS = {"script", "argv", "cwd", "env", "executable", "prefix"}


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED: pid, uid, gid)."""
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]


def _send_request(conn: socket.socket, request: dict) -> None:
    payload = json.dumps(request).encode()
    socket.send_fds(conn, [struct.pack("!I", len(payload))], [0, 1, 2])
    conn.sendall(payload)


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    if len(header) != 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed warm-start request")
    size = struct.unpack("!I", header)[0]
    chunks, received = [], 0
    while received < size:
        chunk = conn.recv(min(1 << 16, size - received))
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    if received < size:
        for fd in fds:
            os.close(fd)
        raise ValueError("truncated warm-start request")
    return json.loads(b"".join(chunks)), fds


def _reply(conn: socket.socket, **message) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the job process is gone; nothing to tell


# The job's side ----------------------------------------------------------------------------------------

def run_in_server(script: str | None = None) -> None:
    """Run this script job in a fork of the warm-start server and exit with its status.

    Returns (and the caller runs the job cold, in this process) when there is no server to use;
    the reason is logged. ``script`` defaults to the file Python is running (Snakemake's copy of
    the rule's script, which it deletes only after this process exits).
    """
    path = os.environ.get(SOCKET_ENV)
    if _in_child or not path:
        return
    if "SLURM_JOB_ID" in os.environ:
        log.info("warm start: off inside a SLURM job; running in this process")
        return
    try:
        folder = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError as err:
        log.warning("warm start: server at %s not reachable (%s); running in this process", path, err)
        return
    if folder.st_uid != os.getuid() or folder.st_mode & 0o077:
        log.warning("warm start: the socket folder of %s is not this user's alone (owner uid %d, mode %o); "
                    "running in this process", path, folder.st_uid, folder.st_mode & 0o777)
        return
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        server_uid = peer_uid(conn)
        if server_uid != os.getuid():  # it would receive this job's environment and report its status
            log.warning("warm start: the server at %s is run by another user (uid %d); running in this process",
                        path, server_uid)
            conn.close()
            return
        _send_request(conn, {
            "script": os.path.abspath(script or sys.argv[0]), "argv": sys.argv, "cwd": os.getcwd(),
            "env": dict(os.environ), "executable": sys.executable, "prefix": sys.prefix,
        })
    except OSError as err:
        log.warning("warm start: server at %s not reachable (%s); running in this process", path, err)
        conn.close()
        return
    replies = conn.makefile("rb")
    first = _read_reply(replies)
    if first is None or first["status"] != "started":
        reason = first.get("reason") if first else "the server closed the connection"
        log.warning("warm start: not used (%s); running in this process", reason)
        conn.close()
        return
    log.info("warm start: running in a fork of the warm-start server, pid %s", first["pid"])
    sys.stderr.flush()
    last = _read_reply(replies)
    if last is None:
        print("warm start: the server went away while it ran this job", file=sys.stderr)
        sys.exit(1)
    code = last["code"]
    sys.exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell reports it


def _read_reply(replies) -> dict | None:
    line = replies.readline()
    return json.loads(line) if line else None


# The server's side -------------------------------------------------------------------------------------

def serve(socket_path: str, parent_pid: int, preload=PRELOAD) -> None:
    """Import ``preload``, then fork one child per request until the parent process is gone or SIGTERM."""
    import gc
    import importlib
    import selectors
    import signal

    # A pre-fork server: without a collection in the parent, and with what it holds frozen out of the
    # children's collections, children do not write to (and so copy) the pages of the parent's objects.
    gc.disable()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)  # before the slow imports: jobs may connect and wait in the backlog
    listener.listen(256)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as err:  # a child imports it again and reports the error in its own log
            log.warning("warm start: could not preload %s: %s", name, err)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised while preloading; forked children could not use it")
    if torch is not None and _children_would_be_in_a_bad_fork():
        raise RuntimeError("a preloaded module asked CUDA for its devices (torch.cuda.is_available() or "
                           "device_count() without NVML): forked children could not use CUDA; jobs run cold")
    gc.freeze()
    log.info("warm start: ready on %s (pid %d)", socket_path, os.getpid())

    stopping = []
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop through the pipe
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    try:
        while not stopping and os.getppid() == parent_pid:
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    try:
                        _start_child(conn, listener, children)
                    except Exception as err:  # one bad request must not end the server and its running jobs
                        log.warning("warm start: request failed: %s: %s", type(err).__name__, err)
                        _reply(conn, status="refused", reason=f"the server failed on this request ({err})")
                        conn.close()
                else:
                    while True:
                        try:
                            if not os.read(wake_read, 512):
                                break
                        except BlockingIOError:
                            break
            _reap(children)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        listener.close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        try:  # its folder (start_server's mkdtemp) too: after a kill -9 of Snakemake nobody else removes it
            os.rmdir(os.path.dirname(socket_path))
        except OSError:
            pass
        log.info("warm start: stopped (%d jobs still running were terminated)", len(children))


def _children_would_be_in_a_bad_fork() -> bool:
    """Fork once and ask the child: a CUDA device-count call in this process (which is not CUDA
    initialisation, so ``is_initialized()`` stays False) makes every forked child fail with
    "Cannot re-initialize CUDA in forked subprocess"."""
    pid = os.fork()
    if pid == 0:
        os._exit(1 if sys.modules["torch"].cuda._is_in_bad_fork() else 0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) != 0


def _start_child(conn: socket.socket, listener: socket.socket, children: dict) -> None:
    conn.settimeout(10)
    try:
        if peer_uid(conn) != os.getuid():
            raise ValueError("request from another user")
        request, fds = _receive_request(conn)
    except (OSError, ValueError) as err:
        log.warning("warm start: request dropped: %s", err)
        conn.close()
        return
    conn.settimeout(None)
    missing = REQUEST_KEYS - set(request) if isinstance(request, dict) else REQUEST_KEYS
    if missing:
        _reply(conn, status="refused", reason=f"malformed request: no {', '.join(sorted(missing))}")
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    if (request["executable"], request["prefix"]) != (sys.executable, sys.prefix):
        _reply(conn, status="refused", reason=f"the job runs {request['executable']}, the server {sys.executable}")
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    server_pid = os.getpid()
    try:
        pid = os.fork()
    except OSError as err:  # EAGAIN under a process limit, ENOMEM: this job runs cold instead
        log.warning("warm start: cannot fork for a job: %s", err)
        _reply(conn, status="refused", reason=f"the server cannot fork ({err})")
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    if pid == 0:
        _run_child(conn, listener, fds, request, server_pid)  # never returns
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    _reply(conn, status="started", pid=pid)


def _reap(children: dict) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            _reply(conn, status="exited", code=os.waitstatus_to_exitcode(status))
            conn.close()


def _run_child(conn: socket.socket, listener: socket.socket, fds: list[int], request: dict, server_pid: int) -> None:
    import atexit
    import runpy
    import signal
    import threading
    import traceback

    global _in_child
    code = 1
    try:
        _in_child = True
        listener.close()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(server_pid)
        import gc

        gc.enable()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(SOCKET_ENV, None)
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(request["script"])  # as `python script.py` would set it
        try:
            threading.Thread(target=_exit_when_job_leaves, args=(conn,), daemon=True).start()
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
        except BaseException:
            sys.excepthook(*sys.exc_info())  # as `python script.py` reports it (and so scripting's hooks see it)
        atexit._run_exitfuncs()
    except BaseException:  # before the script ran (e.g. its folder is gone): the job's log says why
        print("warm start: the child could not run the job:", file=sys.stderr)
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _exit_when_job_leaves(conn: socket.socket) -> None:
    """The job process never writes after its request: end of stream means it is gone (killed,
    or terminated: then the temporaries this child is writing go too)."""
    try:
        conn.recv(1)
    except OSError:
        pass
    atomic = sys.modules.get("proxyattention.files.atomic")  # imported by the stage, if it writes anything
    if atomic is not None:
        atomic.remove_live_temporaries()
    os._exit(1)


def _die_with_parent(server_pid: int) -> None:
    """Linux: ask the kernel to SIGKILL this process when the server dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != server_pid:  # the server died before the request took effect
        os._exit(1)


# Starting and stopping a server (the Snakefile's onstart / onsuccess / onerror hooks) ------------------

class Server:
    """A running warm-start server process and the private folder of its socket."""

    def __init__(self, process, folder: str):
        self.process = process
        self.folder = folder
        self.socket_path = os.path.join(folder, "socket")

    def stop(self, timeout: float = 10.0) -> None:
        import shutil
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if os.environ.get(SOCKET_ENV) == self.socket_path:
            del os.environ[SOCKET_ENV]
        shutil.rmtree(self.folder, ignore_errors=True)


def start_server(log_path: str, extra_path: str | None = None, wait_seconds: float = 30.0) -> Server | None:
    """Start a server for this process's jobs; set ``$PA_WARM_SOCKET`` for them. None when it cannot start.

    The server exits by itself when this process is gone, even if it was killed.
    """
    import subprocess
    import tempfile
    import time

    folder = tempfile.mkdtemp(prefix="pa-warm-")  # mode 0700: only this user can connect
    socket_path = os.path.join(folder, "socket")
    env = dict(os.environ)
    # torch.cuda.is_available() and device_count() then ask NVML, which does not poison forks, where
    # NVML works (the server also checks a fork before serving)
    env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH")) if p)
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxyattention.runtime.warm", "--socket", socket_path, "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = Server(process, folder)
    deadline = time.monotonic() + wait_seconds
    while not os.path.exists(socket_path):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            return None
        time.sleep(0.02)
    os.environ[SOCKET_ENV] = socket_path
    return server


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="warm-start server for proxyattention's Snakemake jobs")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--parent", type=int, required=True, help="exit when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.socket, args.parent)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: children must see the real module's state.
    from .warm import main as real_main

    real_main()
