"""#27: files other people read, and files a crash can leave behind."""

import os
import stat

import pytest
import torch

from proxyattention.files.atomic import atomic_path


@pytest.fixture
def group_umask():
    old = os.umask(0o002)  # a shared project folder: the group may read and write
    yield
    os.umask(old)


def test_a_checkpoint_gets_the_umask_s_permissions(tmp_path, group_umask):
    """#27.9: safetensors' save_file replaces the temporary file, so the chmod made on it was lost
    and every checkpoint was 0600: group members could not read model.safetensors."""
    from proxyattention.models.build import save_checkpoint

    model = torch.nn.Linear(3, 2)
    save_checkpoint(model, tmp_path / "model.safetensors", tmp_path / "model.json", {"timm_name": "x"})
    for name in ("model.safetensors", "model.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o664, name


def test_any_writer_that_replaces_the_temporary_file_keeps_the_permissions(tmp_path, group_umask):
    with atomic_path(tmp_path / "out.bin") as tmp:
        other = tmp.with_name("elsewhere")
        other.write_bytes(b"x")
        os.chmod(other, 0o600)
        os.replace(other, tmp)  # what safetensors and some savers do
    assert stat.S_IMODE(os.stat(tmp_path / "out.bin").st_mode) == 0o664


TERMINATED = """
import sys, time
from proxyattention.runtime.scripting import remove_temporaries_on_sigterm
from proxyattention.files.atomic import atomic_path
remove_temporaries_on_sigterm()
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 10_000_000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_terminated_stage_leaves_no_temporary_behind(tmp_path):
    """#27.5: SIGTERM (SLURM's time limit, preemption) left each output's full-size hidden
    temporary behind (three SIGTERMs to prepare: three 451 MB files). The stage removes what it is
    writing and still dies of SIGTERM, as Snakemake and SLURM expect."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", TERMINATED, str(tmp_path / "images.npy")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.glob(".images.*"))) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_the_next_attempt_removes_what_a_sigkill_left(tmp_path):
    """SIGKILL (out of memory) cannot be caught: the next attempt at the same output removes the
    temporaries an earlier attempt left, and nothing of other outputs."""
    from proxyattention.files.atomic import atomic_dir

    stale = [tmp_path / ".images.k1l2ed_x.tmp.npy", tmp_path / ".images.abcdefgh.tmp.npy.rows"]
    others = [tmp_path / ".index.abcdefgh.tmp.csv", tmp_path / ".images.abcdefgh.tmp.csv", tmp_path / "images.npy.bak"]
    for p in stale + others:
        p.write_bytes(b"left")
    (tmp_path / ".figures.abcdefgh.tmp").mkdir()
    with atomic_path(tmp_path / "images.npy") as tmp:
        tmp.write_bytes(b"new")
    with atomic_dir(tmp_path / "figures") as tmp:
        (tmp / "a.png").write_bytes(b"png")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    assert not (tmp_path / ".figures.abcdefgh.tmp").exists() and (tmp_path / "figures" / "a.png").exists()
