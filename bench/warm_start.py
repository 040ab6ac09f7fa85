"""Whole workflow: the demo with warm start against its anchor, the same run cold (a fresh Python
per job); wall time x cores against the stages' own time.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import ROOT


def run_workflow(config_path: Path, workdir: Path, cores: int, warm_start: bool) -> dict:
    """Run the whole workflow on ``config_path`` in a fresh ``workdir``; wall time against the jobs'
    wall times (Snakemake's benchmark files) and the stages' own time (the `stage X took S s` log lines)."""
    import pandas as pd
    import yaml

    from proxyattention.runtime.timing import stage_seconds

    config = yaml.safe_load(config_path.read_text())
    for dataset in config["datasets"].values():  # the copy runs elsewhere: anchor data paths at the repo
        dataset["path"] = str((ROOT / dataset["path"]).resolve())
    config["results"] = "results"
    config["warm_start"] = warm_start
    workdir.mkdir(parents=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
                           "--cores", str(cores), "--directory", str(workdir), "--configfile", str(workdir / "config.yaml")],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the workflow run in {workdir} failed:\n{proc.stderr[-3000:]}")
    results = workdir / "results"
    jobs = {p.relative_to(results / "benchmarks").with_suffix(""): float(pd.read_csv(p, sep="\t")["s"].iloc[-1])
            for p in (results / "benchmarks").rglob("*.tsv")}
    stages = {p.relative_to(results / "logs").with_suffix(""): stage_seconds(p.read_text())
              for p in (results / "logs").rglob("*.log") if p.name != "warm_start.log"}
    overhead = [jobs[k] - stages[k] for k in jobs if k in stages]
    job_s, stage_s = sum(jobs.values()), sum(stages.values())
    return {"warm_start": warm_start, "jobs": len(stages), "cores": cores, "wall_s": wall,
            "sum_job_s": job_s, "sum_stage_s": stage_s,
            "median_overhead_per_job_s": statistics.median(overhead) if overhead else None,
            "wall_x_cores_over_stage_s": wall * cores / stage_s}


def quick_config(config_path: Path, out: Path) -> Path:
    """One model, one seed, the finetune only: the smallest run that still goes through Snakemake."""
    import yaml

    config = yaml.safe_load(config_path.read_text())
    first = next(iter(config["models"]))
    config.update(models={first: config["models"][first]}, seeds=[0], cycles=0,
                  training={**config.get("training", {}), "epochs_finetune": 1})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quick_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def bench_workflow(config_path: Path, cores: int) -> list[dict]:
    """The same workflow cold (a fresh Python per job) and warm (each job a fork of a warm server)."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_workflow(config_path, Path(tmp) / name, cores, warm)
                for name, warm in (("cold", False), ("warm", True))]
    rows[1]["wall_vs_cold"] = rows[1]["wall_s"] / rows[0]["wall_s"]
    return rows
