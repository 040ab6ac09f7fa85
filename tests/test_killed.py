"""SIGKILL the whole workflow at a random moment; the rerun finishes and every output decodes."""

import json
import os
import random
import signal
import subprocess
import time

import cv2
import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from test_workflow import SNAKEMAKE, tiny_config


def decodes(path) -> None:
    """Open a workflow output fully; raise if it is truncated or malformed."""
    suffix = path.suffix
    if suffix == ".npy":
        np.load(path)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            [data[k] for k in data.files]
    elif suffix == ".csv":
        pd.read_csv(path)
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".safetensors":
        load_file(path)
    elif suffix == ".png":
        assert cv2.imread(str(path)) is not None, path


@pytest.mark.slow
def test_rerun_after_sigkill_completes_with_whole_files(tmp_path):
    tiny_config(tmp_path, seeds=[0], arms=["proxy"], cycles=1,
                training={"epochs_finetune": 3, "epochs": 1, "num_workers": 0, "threads": 1})
    args = SNAKEMAKE + ["--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]
    moment = random.Random(12).uniform(10, 30)  # seeded: a failure can be repeated
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(moment)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
    proc.wait()
    # A killed Snakemake leaves its lock; the documented recovery is --unlock, then the same command.
    subprocess.run(args + ["--unlock"], capture_output=True, check=True)
    rerun = subprocess.run(args, capture_output=True, text=True)
    assert rerun.returncode == 0, f"killed after {moment:.1f} s\n" + rerun.stderr[-4000:]
    results = tmp_path / "results"
    assert (results / "summary.csv").exists()
    finals = [p for p in results.rglob("*") if p.is_file() and not p.name.startswith(".")]
    for path in finals:
        decodes(path)
    assert not list(results.rglob(".train_state")), "training state is removed once a stage completes"
    # hidden temporaries too (#27.5): the rerun of a killed job removes what the killed attempt left
    left = [p for p in results.rglob(".*") if ".tmp" in p.name]
    assert not left, left


@pytest.mark.parametrize("ending, kept", [("pass", False), ("raise ValueError('bad batch')", True),
                                          ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", True)])
def test_the_log_of_an_attempt_that_did_not_finish_survives_the_rerun(tmp_path, ending, kept):
    """#42 (smaller): Snakemake removes a job's log before running the job again, so a rerun lost
    the log of the interrupted attempt. Each attempt's log has a second name, removed when the
    attempt ends without an error: a failed or killed attempt's log (traceback included) stays."""
    import subprocess
    import sys

    from conftest import ROOT

    log = tmp_path / "job.log"
    log.write_text("")
    script = (
        "import sys, types\n"
        f"sys.path.insert(0, {str(ROOT / 'workflow')!r})\n"
        "from proxyattention.runtime.scripting import setup\n"
        f"setup(types.SimpleNamespace(log=[{str(log)!r}], rule='prepare', threads=1, config={{}}))\n"
        "print('stage started')\n"
        f"{ending}\n")
    subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                   env={k: v for k, v in __import__("os").environ.items() if k != "PA_WARM_SOCKET"})
    attempts = list(tmp_path.glob("job.log.attempt-*"))
    assert len(attempts) == (1 if kept else 0), attempts
    if kept:
        log.unlink()  # as Snakemake does before the rerun
        text = attempts[0].read_text()
        assert "stage started" in text and ("ValueError: bad batch" in text or "SIGKILL" in ending)
