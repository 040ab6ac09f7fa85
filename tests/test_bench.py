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
    and the table has each stage's start-up, wind-down, per-image time between them (and after
    start-up) and sampled peak anonymous memory at both; exactly the stages that mark a start-up or
    a wind-down report one."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scaling.py"), "--sizes", "24,48", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["stage"])
    kinds = ("start-up s", "wind-down s", "ms/img", "after start-up ms/img", "MiB")
    columns = [f"{what} n={n}" for what in kinds for n in (24, 48)] + [
        "memory ratio", "time ratio", "after start-up ratio", "fixed s", "marginal ms/img"]
    at = [header.find(" " + column) for column in columns]
    assert -1 not in at and at == sorted(at), header
    rows = {line.split()[0]: dict(zip(columns, map(float, line.split()[1:])))
            for line in lines[lines.index(header) + 1:]}
    assert list(rows) == ["prepare", "prepare_masks", "finetune", "find_misclassified", "compute_cams",
                          "mask_and_save", "evaluate", "examples"]
    starts = {"finetune", "find_misclassified", "compute_cams", "evaluate"}  # a model loaded, a CAM built
    winds = {"prepare", "prepare_masks", "finetune", "compute_cams", "evaluate"}
    for stage, row in rows.items():
        for n in (24, 48):
            assert (row[f"start-up s n={n}"] > 0) == (stage in starts), (stage, row)
            assert (row[f"wind-down s n={n}"] > 0) == (stage in winds), (stage, row)
            assert row[f"ms/img n={n}"] > 0, (stage, row)
            # after start-up = the images' time + the wind-down's, per image
            assert row[f"after start-up ms/img n={n}"] == pytest.approx(
                row[f"ms/img n={n}"] + 1000 * row[f"wind-down s n={n}"] / n, rel=2e-3, abs=2e-3), (stage, row)
            assert row[f"MiB n={n}"] > 50, (stage, row)  # a Python process's own memory, sampled
        assert row["memory ratio"] == pytest.approx(row["MiB n=48"] / row["MiB n=24"], rel=1e-3, abs=1e-3)
        if stage != "examples":
            assert row["time ratio"] == pytest.approx(row["ms/img n=48"] / row["ms/img n=24"], rel=2e-3, abs=2e-3)
            # the line through both sizes' times on the images: fixed seconds + marginal ms x N
            for n in (24, 48):
                assert row["fixed s"] + row["marginal ms/img"] * n / 1000 == pytest.approx(
                    row[f"ms/img n={n}"] * n / 1000, rel=5e-3, abs=5e-3), (stage, row)
    assert all(np.isnan(rows["examples"][c]) for c in ("time ratio", "after start-up ratio", "fixed s",
                                                       "marginal ms/img"))

    # one stage measured again on that run's files, the others not run
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "scaling.py"), "--sizes", "24,48", "--out",
                            str(tmp_path), "--stages", "evaluate"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    lines = again.stdout.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["stage"])
    assert [line.split()[0] for line in lines[lines.index(header) + 1:]] == ["evaluate"]


def test_the_scaling_bench_counts_a_stage_s_fastest_run_and_its_highest_memory():
    """--repeats R: the fastest of a stage's runs is its time (a slower run is the page cache or the
    disk, never less work), the highest sampled peak its memory; no repeat at all is refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scaling", ROOT / "bench" / "scaling.py")
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    runs = [{"seconds": 9.5, "startup": 2.0, "winddown": 0.25, "peak_anon_mib": 300.0},
            {"seconds": 7.75, "startup": 0.5, "winddown": 1.0, "peak_anon_mib": 310.0},
            {"seconds": 8.0, "startup": 1.5, "winddown": 0.0, "peak_anon_mib": 290.0}]
    # the images' seconds: 7.25, 6.25, 6.5 - the second run's, though not the least after start-up
    assert scaling.fastest(runs) == {"seconds": 7.75, "startup": 0.5, "winddown": 1.0, "peak_anon_mib": 310.0,
                                     "runs": [7.25, 6.25, 6.5]}
    with pytest.raises(ValueError, match="--repeats 0"):
        scaling.bench_scaling((24, 48), repeats=0)
    with pytest.raises(ValueError, match="--stages sampling: unknown; allowed: prepare,"):
        scaling.bench_scaling((24, 48), stages=["evaluate", "sampling"])
    # a subset of the stages reads an earlier whole run's files: refused, naming them, without one
    with pytest.raises(ValueError, match=r"--stages finetune,evaluate measures .* \(it has no n24/index.csv, "
                                         r"n48/index.csv\)"):
        scaling.bench_scaling((24, 48), stages=["evaluate", "finetune"])
