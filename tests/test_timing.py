"""runtime/timing.py: a stage's logged time, and the start-up and wind-down a stage marks."""

import logging
import time

import pytest

from proxyattention.runtime import timing
from proxyattention.runtime.timing import PATTERN, images_done, last_stage_seconds, startup_done, timed_stage


@timed_stage
def loads_then_works(inner=None):
    time.sleep(0.05)  # start-up
    if inner is not None:
        inner()  # a stage called inside another: its mark is its own
    startup_done()
    time.sleep(0.1)  # the images
    startup_done()  # a later mark does not move the first


@timed_stage
def loads_works_then_writes():
    time.sleep(0.05)  # start-up
    startup_done()
    time.sleep(0.1)  # the images
    images_done()
    time.sleep(0.05)  # the wind-down: a checkpoint, a metrics.json
    images_done()  # a later mark does not move the first


@timed_stage
def works_then_writes():
    time.sleep(0.02)
    images_done()
    time.sleep(0.03)


@timed_stage
def marks_nothing():
    time.sleep(0.02)


@timed_stage
def fails_after_start_up():
    startup_done()
    raise RuntimeError("made to fail")


def test_the_start_up_ends_at_the_stage_s_first_mark_and_its_log_line_still_gives_its_time(caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="proxyattention.stage")
    del timing.RECORDS[:]
    loads_then_works()
    [record] = timing.RECORDS
    assert record["stage"] == "loads_then_works"
    # sleeps last at least as long as asked: the start-up holds the first, the rest the second
    assert record["startup"] >= 0.05 and record["seconds"] - record["startup"] >= 0.1
    [line] = [r.getMessage() for r in caplog.records]
    assert line == f"stage loads_then_works took {record['seconds']:.3f} s (start-up {record['startup']:.3f} s)"
    log = tmp_path / "job.log"
    log.write_text(line + "\n")  # what the costs read from a job's log
    assert PATTERN.findall(line) == [("loads_then_works", f"{record['seconds']:.3f}")]
    assert last_stage_seconds(log, "loads_then_works") == pytest.approx(record["seconds"], abs=5e-4)


def test_a_stage_without_a_mark_has_no_start_up_and_a_nested_stage_keeps_its_own():
    del timing.RECORDS[:]
    marks_nothing()
    loads_then_works(inner=marks_nothing)
    inner, outer = timing.RECORDS[1:]
    assert timing.RECORDS[0]["startup"] == 0.0 and inner["startup"] == 0.0
    # the outer stage's start-up holds its own sleep and the whole inner stage
    assert outer["startup"] >= 0.05 + inner["seconds"]


def test_a_stage_that_raises_is_logged_as_stopped_and_recorded_nowhere(caplog):
    caplog.set_level(logging.INFO, logger="proxyattention.stage")
    del timing.RECORDS[:]
    with pytest.raises(RuntimeError, match="made to fail"):
        fails_after_start_up()
    assert timing.RECORDS == [] and timing._starts == []
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("stage fails_after_start_up stopped after ") and line.endswith("(RuntimeError)")
    assert not PATTERN.search(line)
    startup_done()  # outside any stage: nothing to mark
    assert timing._starts == []


def test_the_wind_down_starts_at_the_stage_s_first_images_done_and_the_images_keep_what_is_between(caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="proxyattention.stage")
    del timing.RECORDS[:]
    loads_works_then_writes()
    works_then_writes()
    both, last = timing.RECORDS
    assert both["startup"] >= 0.05 and both["winddown"] >= 0.05
    assert both["seconds"] - both["startup"] - both["winddown"] >= 0.1
    assert last["startup"] == 0.0 and last["winddown"] >= 0.03 and last["seconds"] - last["winddown"] >= 0.02
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"stage loads_works_then_writes took {both['seconds']:.3f} s (start-up {both['startup']:.3f} s, "
                     f"wind-down {both['winddown']:.3f} s)",
                     f"stage works_then_writes took {last['seconds']:.3f} s (wind-down {last['winddown']:.3f} s)"]
    log = tmp_path / "job.log"
    log.write_text("\n".join(lines) + "\n")  # the costs still read each stage's whole time
    assert last_stage_seconds(log, "loads_works_then_writes") == pytest.approx(both["seconds"], abs=5e-4)
    assert last_stage_seconds(log, "works_then_writes") == pytest.approx(last["seconds"], abs=5e-4)
    images_done()  # outside any stage: nothing to mark
    assert timing._starts == []


def test_measure_imports_the_map_library_in_its_start_up_only_when_its_maps_need_it():
    """The measure stage's pytorch-grad-cam import (seconds) happens before its start-up mark,
    not inside its passes over the images; with maps off, or on the fast path, not at all."""
    import subprocess
    import sys

    from conftest import ROOT

    code = """
import sys, timm
from proxyattention.models.cams import final_feature_layer
from proxyattention.stages.evaluate import load_map_library
model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10).eval()
def settings(maps, layer):
    return {"evaluation": {"maps": maps}, "maps": {"target_layer": layer, "cam_method": "gradcam", "fast_path": True}}
load_map_library(settings(False, "blocks.2"), model, 32)
off = "pytorch_grad_cam" in sys.modules
load_map_library(settings(True, final_feature_layer(model, 32)), model, 32)  # the fast path: no library
fast = "pytorch_grad_cam" in sys.modules
load_map_library(settings(True, "blocks.2"), model, 32)
print(off, fast, "pytorch_grad_cam" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "False", "True"], proc.stdout
