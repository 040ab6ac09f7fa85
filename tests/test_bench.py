"""Run every benchmark once at tiny sizes so they cannot rot (no timing is asserted)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


def test_benchmarks_run_and_report(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    cams = report["cams"][0]
    assert cams["max_abs_diff"] < 1e-4 and cams["fast_img_s"] > 0
    assert report["training"][0]["ratio"] > 0
    assert report["masking"][0]["identical_output"]
    assert report["data_path"][0]["identical_batch"] and report["data_path"][0]["worker_ratio"] > 0
    assert report["channels_last"][0]["ratio"] > 0
    assert report["loader"][0]["identical_batches"] and report["loader"][0]["threads_1_of_plain"] > 0
    assert report["prepare"][0]["identical_output"] and report["prepare"][0]["n_threads_img_s"] > 0
    cold, warm = report["workflow"]
    assert (cold["warm_start"], warm["warm_start"]) == (False, True)
    assert cold["jobs"] == warm["jobs"] > 0 and cold["sum_stage_s"] > 0 and warm["wall_x_cores_over_stage_s"] > 0
    assert "## Training" in (tmp_path / "bench.md").read_text()


def test_the_scaling_bench_runs_each_stage_in_its_own_process_and_reports_its_memory(tmp_path):
    """README's `python bench/scaling.py`, at two tiny sizes: every stage ran (it raises otherwise)
    and the table has each stage's start-up, per-image time after it and sampled peak anonymous
    memory at both; the stages with a model report a start-up, the others none."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scaling.py"), "--sizes", "24,48", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["stage"])
    columns = ["stage"] + [f"{what} n={n}" for what in ("start-up s", "ms/img", "MiB") for n in (24, 48)] + [
        "memory ratio", "time ratio"]
    at = [header.find(column) for column in columns]
    assert -1 not in at and at == sorted(at), header
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[lines.index(header) + 1:]}
    assert list(rows) == ["prepare", "prepare_masks", "finetune", "find_misclassified", "compute_cams",
                          "mask_and_save", "evaluate", "examples"]
    model_stages = {"finetune", "find_misclassified", "compute_cams", "evaluate"}
    for stage, values in rows.items():
        startup, per_image, memory = values[0:2], values[2:4], values[4:6]
        assert all((s > 0) == (stage in model_stages) for s in startup), (stage, startup)
        assert all(t > 0 for t in per_image), (stage, per_image)
        assert all(m > 50 for m in memory), (stage, memory)  # a Python process's own memory, sampled
        assert values[6] == pytest.approx(memory[1] / memory[0], rel=1e-3, abs=1e-3)
    assert np.isnan(rows["examples"][7]) and not np.isnan(rows["finetune"][7])


def test_the_scaling_bench_counts_a_stage_s_fastest_run_and_its_highest_memory():
    """--repeats R: the fastest of a stage's runs is its time (a slower run is the page cache or the
    disk, never less work), the highest sampled peak its memory; no repeat at all is refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scaling", ROOT / "bench" / "scaling.py")
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    runs = [{"seconds": 9.5, "startup": 2.0, "peak_anon_mib": 300.0},
            {"seconds": 7.75, "startup": 0.5, "peak_anon_mib": 310.0},
            {"seconds": 8.0, "startup": 1.5, "peak_anon_mib": 290.0}]
    assert scaling.fastest(runs) == {"seconds": 8.0, "startup": 1.5, "peak_anon_mib": 310.0,
                                     "runs": [7.5, 7.25, 6.5]}
    with pytest.raises(ValueError, match="--repeats 0"):
        scaling.bench_scaling((24, 48), repeats=0)
