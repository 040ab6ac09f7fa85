"""Shared fixtures: real (small) data from the embedded Fashion-MNIST demo and bundled photos, and
the tiny whole-DAG run (one per session: the workflow and the named-arms tests both read it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "workflow" / "data" / "fashion_mnist_demo"


def shipped_configs() -> dict[str, list[Path]]:
    """Every shipped config*.yaml with the files it runs with: an overlay (a file without
    ``datasets``, as config.study3.sizing.yaml) after the config its name extends (config.study3.yaml),
    as its header's command gives them to ``--configfile``."""
    runs = {}
    for path in sorted(ROOT.glob("config*.yaml")):
        files = [path]
        while "datasets" not in (yaml.safe_load(files[0].read_text()) or {}):
            base = files[0].with_name(files[0].name.rsplit(".", 2)[0] + ".yaml")
            assert base != files[0] and base.exists(), f"{path.name} has no datasets and no config it extends"
            files.insert(0, base)
        runs[path.name] = files
    return runs


def user_command(*words: str) -> list[str]:
    """A command as the README writes it, run with this environment's own entry point
    (``snakemake ...`` is the ``snakemake`` beside this Python, whatever PATH says)."""
    program = Path(sys.executable).parent / words[0]
    return [str(program) if program.exists() else words[0], *words[1:]]


@contextlib.contextmanager
def kept_as_was(*places):
    """The files at ``places`` (files, or folders and everything in them) put back on exit as they
    were on entry, bytes and modification times, and files made meanwhile in those folders removed:
    a test that reruns or edits a job's outputs in a run other tests share leaves that run
    finished, with nothing for the next test's Snakemake to rerun."""
    places = [Path(p) for p in places]
    saved = {}
    for place in places:
        for path in [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]:
            stat = path.stat()
            saved[path] = (path.read_bytes(), stat.st_atime_ns, stat.st_mtime_ns)
    try:
        yield
    finally:
        for place in places:
            if place.is_dir():
                for path in [p for p in place.rglob("*") if p.is_file() and p not in saved]:
                    path.unlink()
        for path, (data, atime, mtime) in saved.items():
            if not path.is_file() or path.stat().st_mtime_ns != mtime or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.unlink(missing_ok=True)  # a hard link (a kept attempt's log) is not written through
                path.write_bytes(data)
                os.utime(path, ns=(atime, mtime))


def make_config(**overrides) -> dict:
    """A validated config on the demo data at 32 px with efficientnet_lite0's bundled weights."""
    from proxyattention.settings.validate import validate

    config = {
        "datasets": {"fm": {"source": "idx", "path": str(DEMO), "image_size": 32}},
        "models": {"lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "bundled", "batch_size": 50}},
        "training": {"epochs_finetune": 1, "epochs": 1, "num_workers": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return validate(config)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """The demo dataset prepared at 32 px: paths of images.npy, index.csv, classes.json."""
    from proxyattention.stages.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    config = make_config()
    prepare(config["datasets"]["fm"], out / "images.npy", out / "index.csv", out / "classes.json", out / "skipped.csv")
    return {"images": out / "images.npy", "index": out / "index.csv", "classes": out / "classes.json"}


@pytest.fixture(scope="session")
def trained(prepared, tmp_path_factory):
    """A one-epoch finetune of efficientnet_lite0 on the prepared demo data."""
    from proxyattention.settings.stage_settings import stage_settings
    from proxyattention.stages.train import train

    out = tmp_path_factory.mktemp("run")
    config = make_config()
    paths = {k: out / n for k, n in [("weights", "model.safetensors"), ("meta", "model.json"),
                                     ("epochs", "epochs.csv"), ("stats", "train_stats.json"),
                                     ("optimizer", "optimizer.safetensors")]}
    train(stage_settings(config, "fm", "lite0", 0), prepared["images"], prepared["index"], prepared["classes"],
          paths["weights"], paths["meta"], paths["epochs"], paths["stats"], seed=0, out_optimizer=paths["optimizer"])
    return {**paths, "config": config}


SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", "2"]


def tiny_config(tmp_path, **overrides):
    config = {
        "results": "results",
        "datasets": {"fm": {"source": "idx", "path": str(DEMO), "image_size": 32,
                            "classes": ["top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                        "sneaker", "bag", "boot"]}},
        "models": {"lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "bundled", "batch_size": 100}},
        "training": {"epochs_finetune": 1, "epochs": 1, "num_workers": 0},
        "arms": ["baseline", "duplicate", "proxy"],
        "seeds": [0, 1],
        "cycles": 2,
    }
    config.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # arms keep their order, as a user's file does
    return path


def snakemake(workdir, *args, check=True):
    # targets first: --configfile takes every word after it
    proc = subprocess.run(SNAKEMAKE + [*args, "--directory", str(workdir), "--configfile", str(workdir / "config.yaml")],
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-4000:] + proc.stderr[-4000:])
    return proc


def run_dir(workdir, arm, seed, cycle):
    return workdir / "results" / "runs" / "fm" / "lite0" / f"seed{seed}" / arm / f"cycle{cycle}"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    tiny_config(workdir)
    snakemake(workdir)
    return workdir


NAMED_ARMS = {
    "baseline": {"kind": "baseline"},
    "duplicate": {"kind": "duplicate"},
    "gradcam": {"kind": "proxy"},
    "eigencam": {"kind": "proxy", "cam_method": "eigencam"},
    "gradcampp_pred": {"kind": "proxy", "cam_method": "gradcam++", "target": "prediction",
                       "fill": {"mode": "blend", "blend_lambda": 0.4}},
    "gradcam_random": {"kind": "random_erase", "matches": "gradcam"},
    "erasing": {"kind": "erasing"},  # the positive control: random erasing of every training image
}


@pytest.fixture(scope="session")
def six_arm_run(tmp_path_factory):
    """A tiny run of the named arms (the mapping form: six variants and the erasing positive
    control), one seed and one cycle: the named-arms and report tests read it. Its one cycle of 2 epochs makes the run as long as tiny_run's (1 + 1 + 1
    epochs), so under cycle_mode: continue both finetunes train the same slice of the same
    schedule. (One seed: what it checks is per seed; tiny_run has the paired seeds.)"""
    workdir = tmp_path_factory.mktemp("six")
    tiny_config(workdir, arms=NAMED_ARMS, seeds=[0], cycles=1,
                training={"epochs_finetune": 1, "epochs": [2], "num_workers": 0})
    snakemake(workdir)
    return workdir
