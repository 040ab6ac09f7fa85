"""The tiny config through `snakemake --profile profiles/slurm` on a real one-node SLURM cluster.

Starts munged, slurmctld and slurmd on this machine (tests/slurm/cluster.py),
runs the workflow through snakemake-executor-plugin-slurm with profiles/slurm
itself and only what a user of a cluster without GPUs and accounting adds on the
command line, checks that every stage ran as a SLURM job with the profile's
limits and that the results equal a local run. Skips with the reason where it
cannot start a cluster (not root, no apt).
"""

import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, tiny_config, user_command

sys.path.insert(0, str(ROOT / "tests" / "slurm"))
from cluster import Cluster, ClusterUnavailable  # noqa: E402

GRID = dict(seeds=[0], arms=["proxy"], cycles=1)
# The SLURM jobs of GRID (cluster.group: cycle, the default) and the stages each runs.
GROUPS = {
    "group_fm.prepare": ["prepare", "prepare_masks"],
    "group_fm.lite0.seed0.finetune.cycle0": ["evaluate", "finetune", "measure"],
    "group_fm.lite0.seed0.proxy.cycle1": ["compute_cams", "evaluate", "faithfulness", "find_misclassified",
                                          "mask_and_save", "measure", "retrain"],
}


# What profiles/slurm promises each rule (attempt 1): memory, time, GPUs and CPUs per GPU.
PROFILE = {
    "finetune": {"mem_mb": "32000", "runtime": "240", "gpu": "1", "cpus_per_gpu": "8"},
    "retrain": {"mem_mb": "32000", "runtime": "240", "gpu": "1", "cpus_per_gpu": "8"},
    "find_misclassified": {"mem_mb": "16000", "runtime": "30", "gpu": "1", "cpus_per_gpu": "4"},
    "compute_cams": {"mem_mb": "16000", "runtime": "60", "gpu": "1", "cpus_per_gpu": "4"},
    "evaluate": {"mem_mb": "16000", "runtime": "30", "gpu": "1", "cpus_per_gpu": "4"},
    "measure": {"mem_mb": "16000", "runtime": "30", "gpu": "1", "cpus_per_gpu": "4"},
    "prepare": {"mem_mb": "16000", "runtime": "120", "cpus_per_task": "8"},
    "prepare_masks": {"mem_mb": "16000", "runtime": "120", "cpus_per_task": "8"},
    "mask_and_save": {"mem_mb": "8000", "runtime": "30"},
    "faithfulness": {"mem_mb": "16000", "runtime": "60", "gpu": "1", "cpus_per_gpu": "4"},
}


def planned_resources(env_overrides):
    """Each rule's resources in `snakemake --profile profiles/slurm -n`, typed as the README has it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PA_SLURM_")}
    env.update(env_overrides)
    proc = subprocess.run(user_command("snakemake", "--profile", "profiles/slurm", "-n", "--forceall"), cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    planned, rule = {}, None
    for line in proc.stdout.splitlines():
        line = line.strip()  # the jobs of a group job are indented
        if line.startswith("rule ") or line.startswith("localrule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            planned[rule] = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
    return planned


@pytest.mark.parametrize("env", [{}, {"PA_SLURM_ACCOUNT": "proj7", "PA_SLURM_PARTITION": "gpu",
                                      "PA_SLURM_GPU_MODEL": "a100"}])
def test_the_documented_slurm_command_plans_the_profiles_resources(env):
    """`snakemake --profile profiles/slurm` as the README has it: the local workflow profile must not
    replace the SLURM profile's resources, and account, partition and GPU model come from the
    environment (empty, and so left out of sbatch, when unset)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    planned = planned_resources(env)
    assert set(PROFILE) <= set(planned), planned
    for rule, expected in PROFILE.items():
        got = planned[rule]
        assert {k: got.get(k) for k in expected} == expected, (rule, got)
        assert got["slurm_account"] == env.get("PA_SLURM_ACCOUNT", "")
        assert got["slurm_partition"] == env.get("PA_SLURM_PARTITION", "")
        if "gpu" in expected:
            assert got["gpu_model"] == env.get("PA_SLURM_GPU_MODEL", "")
    assert not any("$" in value or "environ" in value for got in planned.values() for value in got.values())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    try:
        c = Cluster(tmp_path_factory.mktemp("slurm")).start()
    except ClusterUnavailable as err:
        pytest.skip(f"no SLURM cluster here: {err}")
    yield c
    c.stop()


def run(workdir, *args, env=None):
    proc = subprocess.run(SNAKEMAKE[:-2] + ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
                                            *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


# What a user of a cluster without GPUs and without accounting adds to the README's command.
GPU_LESS = {"PA_SLURM_PARTITION": "debug", "PA_SLURM_GPUS": "0"}
NO_ACCOUNTING = ["--slurm-no-account", "--slurm-status-command", "squeue",
                 "--slurm-keep-successful-logs",  # the test reads the job ids from the logs
                 "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]


def job_limits(cluster, job_id: int) -> dict:
    out = subprocess.run(["scontrol", "show", "job", str(job_id)], env=cluster.env, capture_output=True,
                         text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


# One thread per training job in the SLURM run and the local one, as their comparison is exact:
# with the profile's 8 threads on this 2-core machine one SLURM run and one local run differed
# (0.245 vs 0.315 after cycle 1), while one thread has given identical numbers every time.
ONE_THREAD = ["--set-threads", "finetune=1", "retrain=1"]
TINY = dict(training={"epochs_finetune": 1, "epochs": 1, "num_workers": 0}, **GRID)


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """GRID run whole through `snakemake --profile profiles/slurm` on the cluster (shared: the
    failing-stage test starts from its preparation and finetune)."""
    slurm_dir = tmp_path_factory.mktemp("slurm_run")
    tiny_config(slurm_dir, **TINY)
    env = {**{k: v for k, v in cluster.env.items() if not k.startswith("PA_SLURM_")}, **GPU_LESS}
    run(slurm_dir, "--profile", str(ROOT / "profiles" / "slurm"), *NO_ACCOUNTING, *ONE_THREAD, env=env)
    return slurm_dir


@pytest.mark.slow
def test_workflow_runs_as_slurm_jobs_and_matches_a_local_run(cluster, slurm_run, tmp_path):
    """`snakemake --profile profiles/slurm` itself, no overlay: one SLURM job per cycle of an arm
    (its stages in series, each its own process) with the profile's memory, time and CPUs summed
    as Snakemake sums a group's, and the results equal a local run with the same threads."""
    slurm_dir, local_dir = slurm_run, tmp_path / "local"
    local_dir.mkdir()
    tiny_config(local_dir, **TINY)
    run(local_dir, "--cores", "2", *ONE_THREAD)

    submitted = {}  # SLURM job id -> (what it was submitted as, the stages it ran)
    for log in (slurm_dir / ".snakemake" / "slurm_logs").rglob("*.log"):
        folder = next(p for p in log.parts if p.startswith(("rule_", "group_")))
        name = folder.split("_")[0] + "_" + folder.split("_")[1]  # group_<id>_<its rules>: the id has no "_" here
        job_id = re.search(r"(\d+)\.log$", log.name)
        assert job_id, log
        stages = sorted(set(re.findall(r"^\s*rule (\w+):", log.read_text(), re.M)))
        submitted[int(job_id.group(1))] = (name, stages)
    # one SLURM job per cycle of an arm (and per finetune, and per dataset's preparation), each
    # running its stages one process each; decide_cycle and the report rules stayed local
    assert sorted(submitted.values()) == sorted(GROUPS.items()), submitted
    for job_id, (name, stages) in submitted.items():  # what SLURM granted each: the group's limits
        limits = job_limits(cluster, job_id)
        # SLURM's own record of the job names the group and the stages in it (the plugin's comment)
        assert limits["Comment"].startswith("rule_" + name[len("group_"):] + "_"), (name, limits.get("Comment"))
        # the plugin cuts a long comment with "...": what is left is the start of the full one
        full = "rule_" + name[len("group_"):] + "_" + "_".join(stages)
        comment = limits["Comment"]
        assert full.startswith(comment[:-3]) if comment.endswith("...") else comment.startswith(full), (name, comment)
        memory = max(int(PROFILE[s]["mem_mb"]) for s in stages)  # the largest stage's: they run in series
        minutes = sum(int(PROFILE[s]["runtime"]) for s in stages)  # their times added up
        assert limits["MinMemoryNode"] == f"{memory}M", (name, limits)
        assert limits["TimeLimit"] == f"{minutes // 60:02d}:{minutes % 60:02d}:00", (name, limits)
        assert limits["Partition"] == "debug"
        if name == "group_fm.prepare":
            assert limits["NumCPUs"] == "8", (name, limits)  # the profile's cpus_per_task

    slurm = pd.read_csv(slurm_dir / "results" / "summary.csv")
    local = pd.read_csv(local_dir / "results" / "summary.csv")
    columns = ["dataset", "model", "arm", "seed", "cycle", "accuracy", "f1_macro", "val_loss", "n_added"]
    pd.testing.assert_frame_equal(slurm[columns], local[columns])


LOCAL_RULES = {"decide_cycle", "aggregate", "figures", "examples", "all"}  # run on the submit host


def submissions(*args) -> tuple[int, dict]:
    """SLURM submissions `snakemake --profile profiles/slurm -n` plans for the whole grid: group jobs,
    and jobs outside any group that are not local rules (with their rules)."""
    proc = subprocess.run(user_command("snakemake", "--profile", "profiles/slurm", "-n", "--forceall", *args),
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    groups = re.findall(r"^\[.*\] Group job (\S+) ", proc.stdout, re.M)
    alone = [r for r in re.findall(r"^rule (\w+):", proc.stdout, re.M) if r not in LOCAL_RULES]
    return len(groups) + len(alone), {r: alone.count(r) for r in set(alone)}


def test_the_thesis_grid_goes_to_slurm_as_one_job_per_cycle_and_the_knob_restores_one_per_stage():
    """config.thesis.yaml: 12 runs (4 models x 3 seeds) of a finetune and 5 arms x 3 cycles, so one
    job per dataset's preparation, per finetune and per arm's cycle (a proxy arm's faithfulness job
    joins its random_erase control's cycle, or its own); `cluster: {group: stage}`
    submits every stage on its own, as before."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    thesis = yaml.safe_load((ROOT / "config.thesis.yaml").read_text())
    runs = len(thesis["models"]) * len(thesis["seeds"])
    grouped, alone = submissions("--configfile", "config.thesis.yaml")
    assert (grouped, alone) == (1 + runs * (1 + len(thesis["arms"]) * thesis["cycles"]), {})
    per_stage, alone = submissions("--configfile", "config.thesis.yaml", "--config", "cluster={group: stage}")
    assert alone["retrain"] == runs * len(thesis["arms"]) * thesis["cycles"] and alone["prepare"] == 1
    assert per_stage == sum(alone.values()) and per_stage > 3 * grouped


def test_a_config_scales_the_profiles_requests_and_the_run_says_what_each_job_asks_for():
    """#42.8: a 320-image run asked for 32 GB and 6.5 h of GPU per cycle (the profile is sized for
    the thesis), and the dry run never showed what a cluster job asks for. `cluster.scale` in the
    config multiplies the profile's memory and time; the start of the run prints each kind of
    cluster job's combined request (largest memory, summed time: its stages run in series)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PA_SLURM_")}
    proc = subprocess.run(user_command("snakemake", "--profile", "profiles/slurm", "-n", "--forceall", "--config",
                                       "cluster={scale: {memory: 0.25, time: 0.1}}"),
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "cluster jobs ask for (first attempt; later attempts more; cluster.scale memory 0.25, time 0.1)" in out
    assert "a finetune: 8 GB, 0 h 30 min, 1 GPU" in out  # finetune 32 GB x 0.25; 240 + 30 + 30 min x 0.1
    planned = {}
    rule = None
    for line in proc.stdout.splitlines():
        if line.strip().startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            planned[rule] = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
    assert planned["retrain"]["mem_mb"] == "8000" and planned["retrain"]["runtime"] == "24"
    assert planned["evaluate"]["mem_mb"] == "4000" and planned["evaluate"]["runtime"] == "3"
    schema = (ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()
    assert "scale:" in schema and "cluster: {scale: {memory: 0.25, time: 0.1}}" in (
        ROOT / "profiles" / "slurm" / "config.yaml").read_text()


def submitted_jobs(workdir) -> dict:
    """SLURM job id -> (group or rule it was submitted as, the stages its log says it ran)."""
    out = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        folder = next(p for p in log.parts if p.startswith(("rule_", "group_")))
        name = folder.split("_")[0] + "_" + folder.split("_")[1]
        out[int(re.search(r"(\d+)\.log$", log.name).group(1))] = (name, sorted(set(
            re.findall(r"^\s*rule (\w+):", log.read_text(), re.M))), log)
    return out


@pytest.mark.slow
def test_a_stage_failing_inside_a_group_job_is_named_and_the_rerun_submits_only_what_is_left(cluster, slurm_run,
                                                                                              tmp_path):
    """#40: the same command after a stage failed in the middle of a cycle's SLURM job (its earlier
    stages done): that job's log names the failed stage and its error, and the rerun submits one
    job holding only the stages left, keeping what the failed job finished. The failure is made
    by a copy of the workflow whose mask_and_save script raises (the stage package is this
    checkout's); the rerun runs the script as it is. The run starts from the shared SLURM run's
    preparation and finetune (their files copied with their times), so its first attempt submits
    only the cycle's job."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for entry in ("Snakefile", "profiles", "envs", "pyproject.toml"):
        (checkout / entry).symlink_to(ROOT / entry)
    shutil.copytree(ROOT / "workflow", checkout / "workflow", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "proxyattention", "proxyattention.egg-info", "data"))
    for entry in ("proxyattention", "data"):
        (checkout / "workflow" / entry).symlink_to(ROOT / "workflow" / entry)
    script = checkout / "workflow" / "scripts" / "mask_and_save.py"
    original = script.read_text()
    script.write_text('raise RuntimeError("mask_and_save made to fail by the test")\n' + original)
    work = tmp_path / "work"
    work.mkdir()
    tiny_config(work, **TINY)
    for done in ("prepared", "runs/fm/lite0/seed0/finetune"):  # copy2 keeps each file's time: nothing to redo
        shutil.copytree(slurm_run / "results" / done, work / "results" / done)
    env = {**{k: v for k, v in cluster.env.items() if not k.startswith("PA_SLURM_")}, **GPU_LESS}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(checkout / "Snakefile"), "--directory",
               str(work), "--configfile", str(work / "config.yaml"), "--profile", str(ROOT / "profiles" / "slurm"),
               *NO_ACCOUNTING, *ONE_THREAD]
    first = subprocess.run(command, capture_output=True, text=True, env=env)
    assert first.returncode != 0, first.stdout[-3000:] + first.stderr[-3000:]
    cycle = "group_fm.lite0.seed0.proxy.cycle1"
    jobs = submitted_jobs(work)
    assert {name for name, _, _ in jobs.values()} == {cycle}, jobs  # the copied preparation and finetune stood
    failed = [(stages, log) for name, stages, log in jobs.values() if name == cycle]
    retries = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())["retries"]
    assert len(failed) == 1 + retries, jobs  # Snakemake resubmits a failed group job whole
    for _, log in failed:  # each attempt's log names the stage and its error
        text = log.read_text()
        assert "Error in rule mask_and_save" in text and "mask_and_save made to fail by the test" in text, text[-3000:]
    cycle_dir = work / "results" / "runs" / "fm" / "lite0" / "seed0" / "proxy" / "cycle1"
    # what the stages before it finished is kept (profiles/slurm: keep-incomplete)
    done = {name: (cycle_dir / name).stat().st_mtime_ns for name in ("selected.csv", "cams.npz", "cams.csv")}
    assert not (cycle_dir / "erased.npz").exists()
    # the submitting run says which group failed and where its log is
    said = first.stdout + first.stderr
    assert "Error in group fm.lite0.seed0.proxy.cycle1" in said and "mask_and_save made to fail" in said, said[-3000:]

    script.write_text(original)
    shutil.rmtree(work / ".snakemake" / "slurm_logs")
    second = subprocess.run(command, capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rerun = sorted((name, stages) for name, stages, _ in submitted_jobs(work).values())
    assert rerun == [(cycle, ["evaluate", "faithfulness", "mask_and_save", "measure", "retrain"])], rerun
    assert {name: (cycle_dir / name).stat().st_mtime_ns for name in done} == done  # kept, not made again
    assert (work / "results" / "summary.csv").exists()
