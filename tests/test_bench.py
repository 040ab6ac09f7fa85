"""Run every benchmark once at tiny sizes so they cannot rot (no timing is asserted)."""

import json
import subprocess
import sys

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
