"""Bring up (and tear down) a real one-node SLURM cluster on this machine, as root.

Used by tests/test_slurm.py. Installs Debian's slurm-wlm and munge when missing,
starts munged, slurmctld and slurmd with a config in a temporary folder, and
stops exactly the daemons it started, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class ClusterUnavailable(RuntimeError):
    """Why a SLURM cluster cannot be started here (the test skips with this reason)."""


def ensure_installed() -> None:
    if os.geteuid() != 0:
        raise ClusterUnavailable("not root: starting SLURM daemons needs root")
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    proc = subprocess.run(["apt-get", "install", "-y", "slurm-wlm", "munge"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0 or not shutil.which("slurmctld"):
        raise ClusterUnavailable(f"cannot install slurm-wlm and munge with apt-get: {proc.stderr[-500:]}")


SLURM_CONF = """\
ClusterName=proxyattention-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
# The node claims the CPUs and memory of a GPU node's share (config_overrides: slurmd does not
# check them against the machine), so jobs run with exactly what profiles/slurm asks for.
SlurmdParameters=config_overrides
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    def __init__(self, root: Path, cpus: int = 8, memory_mb: int = 200000):
        self.root = Path(root)
        self.cpus, self.memory_mb = cpus, memory_mb
        # Job steps (srun inside a batch job) read the default path, not $SLURM_CONF.
        self.conf = Path("/etc/slurm/slurm.conf")
        self.pids: list[int] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> "Cluster":
        ensure_installed()
        if self.conf.exists():
            raise ClusterUnavailable(f"{self.conf} exists: this machine has a SLURM setup the test must not touch")
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self._wrote_conf = True
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        host = socket.gethostname().split(".")[0]
        memory = max(int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8), self.memory_mb)
        self.conf.write_text(SLURM_CONF.format(host=host, root=self.root, cpus=max(os.cpu_count(), self.cpus),
                                               memory=memory))
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.run([daemon, "-f", str(self.conf)], env=self.env, capture_output=True, text=True)
            if proc.returncode != 0:
                self.stop()
                raise ClusterUnavailable(f"{daemon} did not start: {proc.stderr[-500:]}")
            pid_file = self.root / f"{daemon}.pid"
            self._wait(lambda: pid_file.exists() and pid_file.read_text().strip(), f"{daemon} pid file")
            self.pids.append(int(pid_file.read_text()))
        self._wait(self._node_idle, "the node to become idle", timeout=60)
        return self

    def _start_munge(self) -> None:
        # munged runs as the munge user: its folder must not sit below a private (0700) one.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="proxyattention-munge-"))
        os.chmod(self.munge_dir, 0o755)
        shutil.chown(self.munge_dir, "munge", "munge")
        socket_path = self.munge_dir / "munge.socket"
        pid_file = self.munge_dir / "munged.pid"
        proc = subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={socket_path}",
                               f"--pid-file={pid_file}", "--force"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ClusterUnavailable(f"munged did not start: {proc.stderr[-500:]}")
        self._wait(pid_file.exists, "munged")
        self.pids.append(int(pid_file.read_text()))
        # SLURM finds munge's socket through its default path; point it at ours.
        default = Path("/run/munge/munge.socket.2")
        if not default.exists():
            default.parent.mkdir(parents=True, exist_ok=True)
            default.symlink_to(socket_path)
            self._made_link = default

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True).stdout
        return out.strip() in {"idle", "mix"}

    @staticmethod
    def _wait(condition, what: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"timed out waiting for {what}")

    def stop(self) -> None:
        subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True)
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            for _ in range(40):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.25)
        self.pids.clear()
        link = getattr(self, "_made_link", None)
        if link is not None and link.is_symlink():
            link.unlink()
        if getattr(self, "_wrote_conf", False):
            self.conf.unlink(missing_ok=True)
            self._wrote_conf = False
        if getattr(self, "munge_dir", None) is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
