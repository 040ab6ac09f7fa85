"""Local GPU pinning: concurrent jobs get distinct CUDA_VISIBLE_DEVICES (simulated GPU count)."""

import subprocess
import sys


def test_concurrent_jobs_get_distinct_gpus_and_wait_for_a_free_one(tmp_path):
    script = (
        "import os, sys, time; from proxyattention.runtime.scripting import pin_local_gpu; "
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
    from proxyattention.runtime.scripting import pin_local_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("PA_LOCAL_GPUS", "4")
    assert pin_local_gpu(lock_dir=str(tmp_path)) is None  # one GPU visible: nothing to choose
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    assert pin_local_gpu(lock_dir=str(tmp_path)) is None  # inside a SLURM job the scheduler chose
    assert not list(tmp_path.iterdir())


def concurrent_pins(tmp_path, env, n=3, hold=1.0):
    script = (
        "import os, sys, time; from proxyattention.runtime.scripting import pin_local_gpu; "
        "gpu = pin_local_gpu(poll_seconds=0.1); "
        "print(gpu, time.time(), flush=True); time.sleep(float(sys.argv[1]))"
    )
    env = {"PATH": "/usr/bin:/bin", "PA_GPU_LOCK_DIR": str(tmp_path / "locks"), **env}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(hold)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(n)]
    return [p.communicate()[0].split() for p in procs]


def test_a_restricted_visible_set_is_pinned_within(tmp_path):
    """CUDA_VISIBLE_DEVICES=2,3 set by the user: each job gets 2 or 3 alone, never 0 or 1."""
    (tmp_path / "locks").mkdir(mode=0o700)
    out = concurrent_pins(tmp_path, {"CUDA_VISIBLE_DEVICES": "2,3", "PA_LOCAL_GPUS": "4"})
    gpus = sorted(o[0] for o in out)
    assert set(gpus) == {"2", "3"} and len(gpus) == 3
    starts = sorted(float(o[1]) for o in out)
    assert starts[2] - starts[0] > 0.8, "the third job waited for 2 or 3 to be freed"


def test_lock_folder_is_private_and_refuses_anything_else(tmp_path, monkeypatch):
    import os
    import stat

    import pytest

    from proxyattention.runtime.scripting import gpu_lock_dir

    monkeypatch.delenv("PA_GPU_LOCK_DIR", raising=False)
    made = gpu_lock_dir(base=str(tmp_path))
    assert made == str(tmp_path / f"proxyattention-gpus-{os.getuid()}")
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    os.chmod(made, 0o777)  # another user could hold or plant locks here
    with pytest.raises(RuntimeError, match="only this user"):
        gpu_lock_dir(base=str(tmp_path))
    os.rmdir(made)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", made)
    with pytest.raises(RuntimeError, match="not a link"):
        gpu_lock_dir(base=str(tmp_path))


def test_every_job_of_a_user_shares_one_lock_folder_whatever_its_environment(tmp_path, monkeypatch):
    """#27.10: a job with $XDG_RUNTIME_DIR (or $TMPDIR) and one without took the same GPU: the
    folder comes from the uid alone; $PA_GPU_LOCK_DIR still chooses it."""
    import os

    from proxyattention.runtime.scripting import gpu_lock_dir

    monkeypatch.delenv("PA_GPU_LOCK_DIR", raising=False)
    seen = set()
    for xdg, tmpdir in ((None, None), (str(tmp_path / "run"), None), (None, str(tmp_path / "t")),
                        (str(tmp_path / "run"), str(tmp_path / "t"))):
        for name, value in (("XDG_RUNTIME_DIR", xdg), ("TMPDIR", tmpdir)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                os.makedirs(value, exist_ok=True)
                monkeypatch.setenv(name, value)
        import tempfile

        tempfile.tempdir = None  # gettempdir() reads $TMPDIR again
        seen.add(gpu_lock_dir())
    tempfile.tempdir = None
    assert seen == {f"/tmp/proxyattention-gpus-{os.getuid()}"}
    monkeypatch.setenv("PA_GPU_LOCK_DIR", str(tmp_path / "mine"))
    assert gpu_lock_dir() == str(tmp_path / "mine")


def test_a_planted_link_is_not_followed_or_truncated(tmp_path, monkeypatch):
    import os

    import pytest

    from proxyattention.runtime.scripting import pin_local_gpu

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    os.symlink(victim, locks / "gpu-0.lock")
    monkeypatch.setenv("PA_LOCAL_GPUS", "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(OSError):
        pin_local_gpu(lock_dir=str(locks))
    assert victim.read_text() == "keep me"


def test_device_picks_within_the_gpus_already_visible(monkeypatch):
    """#27.18: `--device cuda:1` overwrote CUDA_VISIBLE_DEVICES=2,3 with 1 (a GPU outside the user's
    set); it now means the second visible GPU (3), as the local pinning counts within the set."""
    import pytest

    from proxyattention.cli import UsageError, device_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert device_env("cuda:1")["CUDA_VISIBLE_DEVICES"] == "3"
    assert device_env("cuda:0")["CUDA_VISIBLE_DEVICES"] == "2"
    assert device_env("cpu")["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(UsageError, match=r"cuda:2.*2 GPUs are visible \(CUDA_VISIBLE_DEVICES=2,3\)"):
        device_env("cuda:2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device_env("cuda:1")["CUDA_VISIBLE_DEVICES"] == "1"  # unset: the machine's numbering


def test_every_rule_that_takes_a_gpu_slot_is_pinned_to_its_gpu_and_every_slurm_gpu_rule_takes_one():
    """A rule with ``resources: gpu=1`` holds a local GPU slot; unless setup() pins it to that GPU
    (TORCH_RULES), torch puts it on GPU 0 whatever slot it holds (faithfulness and agreement did),
    and two jobs share a GPU the scheduler thinks free. The SLURM profile gives each such rule its
    GPUs, and no other rule one."""
    import re
    from pathlib import Path

    import yaml

    from proxyattention.runtime.scripting import TORCH_RULES

    root = Path(__file__).resolve().parents[1]
    slot_rules = set()
    for rules in (root / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^rule ", rules.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            if re.search(r"^\s+gpu=1,", block, flags=re.M):
                slot_rules.add(name)
    assert {"finetune", "evaluate", "measure", "faithfulness", "agreement"} <= slot_rules
    assert slot_rules == TORCH_RULES
    profile = yaml.safe_load((root / "profiles" / "slurm" / "config.yaml").read_text())
    assert {r for r, res in profile["set-resources"].items() if "gpu" in res} == slot_rules
