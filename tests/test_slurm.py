"""The tiny config through `snakemake --profile profiles/slurm` on a real one-node SLURM cluster.

Starts munged, slurmctld and slurmd on this machine (tests/slurm/cluster.py),
runs the workflow through snakemake-executor-plugin-slurm with the overlay
tests/slurm/profile (no GPU request, squeue for status), checks that every
stage ran as a SLURM job and that the results equal a local run. Skips with the
reason where it cannot start a cluster (not root, no apt).
"""

import re
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT
from test_workflow import SNAKEMAKE, tiny_config

sys.path.insert(0, str(ROOT / "tests" / "slurm"))
from cluster import Cluster, ClusterUnavailable  # noqa: E402

GRID = dict(seeds=[0], arms=["proxy"], cycles=1)
CLUSTER_RULES = {"prepare", "finetune", "evaluate", "find_misclassified", "compute_cams", "mask_and_save", "retrain"}


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


@pytest.mark.slow
def test_workflow_runs_as_slurm_jobs_and_matches_a_local_run(cluster, tmp_path):
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    for d in (slurm_dir, local_dir):
        d.mkdir()
        tiny_config(d, training={"epochs_finetune": 1, "epochs": 1, "num_workers": 0, "threads": 1}, **GRID)
    run(slurm_dir, "--profile", str(ROOT / "profiles" / "slurm"),
        "--workflow-profile", str(ROOT / "tests" / "slurm" / "profile"), env=cluster.env)
    run(local_dir, "--cores", "1")

    logs = list((slurm_dir / ".snakemake" / "slurm_logs").rglob("*.log"))
    ran = {}
    for log in logs:
        rule = next(p for p in log.parts if p.startswith("rule_"))[len("rule_"):]
        job_id = re.search(r"(\d+)\.log$", log.name)
        assert job_id, log
        ran.setdefault(rule, []).append(int(job_id.group(1)))
    assert set(ran) == CLUSTER_RULES, ran  # every stage went through sbatch; light rules stayed local
    assert len({j for ids in ran.values() for j in ids}) == sum(map(len, ran.values()))

    slurm = pd.read_csv(slurm_dir / "results" / "summary.csv")
    local = pd.read_csv(local_dir / "results" / "summary.csv")
    columns = ["dataset", "model", "arm", "seed", "cycle", "accuracy", "f1_macro", "val_loss", "n_erased"]
    pd.testing.assert_frame_equal(slurm[columns], local[columns])
