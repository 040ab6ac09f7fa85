"""Tiny real training runs on the demo data (32 px, one epoch)."""

import json
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_config
from safetensors.torch import load_file

from proxyattention.analysis.curves import EPOCH_COLUMNS, epoch_curve
from proxyattention.settings.stage_settings import stage_settings
from proxyattention.stages.evaluate import evaluate
from proxyattention.stages.train import train
from proxyattention.training.loop import NonFiniteLossError


def outputs(folder):
    return [folder / n for n in ("model.safetensors", "model.json", "epochs.csv", "train_stats.json")]


def run(prepared, folder, config, seed=0, **kw):
    train(stage_settings(config, "fm", "lite0", kw.pop("cycle", 0)), prepared["images"], prepared["index"],
          prepared["classes"], *outputs(folder), seed=seed, **kw)
    return folder


def test_outputs_and_checkpoint_reproduce_logged_accuracy(prepared, trained, tmp_path):
    epochs = pd.read_csv(trained["epochs"])
    stats = json.loads(trained["stats"].read_text())
    assert list(epochs.columns) == EPOCH_COLUMNS
    assert np.isnan(epochs.curve_accuracy.iloc[-1])  # the last epoch's point is the evaluation's: no pass of its own
    assert stats["images_seen"] == 500 and stats["device"] == "cpu" and stats["precision"] == "fp32"
    assert stats["peak_memory_kind"] == "cpu_peak_rss" and stats["peak_memory_mib"] > 0
    assert not (trained["weights"].parent / ".train_state").exists()
    evaluate(stage_settings(trained["config"], "fm", "lite0", 0), prepared["images"], prepared["index"],
             trained["weights"], trained["meta"], trained["stats"], tmp_path / "metrics.json",
             out_per_image=tmp_path / "per_image.npz")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    curve = epoch_curve(trained["epochs"], tmp_path / "per_image.npz", prepared["index"])
    assert curve.curve_split.iloc[-1] == "val" and curve.curve_images.iloc[-1] == metrics["n_val"] == 200
    assert metrics["accuracy"] == pytest.approx(curve.curve_accuracy.iloc[-1], abs=1e-12)
    assert metrics["val_loss"] == pytest.approx(curve.curve_loss.iloc[-1], rel=1e-5)


def test_same_seed_same_numbers_other_seed_differs(prepared, trained, tmp_path):
    config = trained["config"]
    again = pd.read_csv(outputs(run(prepared, tmp_path / "a", config))[2])
    first = pd.read_csv(trained["epochs"])
    cols = ["train_loss", "train_accuracy", "curve_loss", "curve_accuracy"]
    pd.testing.assert_frame_equal(again[cols], first[cols])
    other = pd.read_csv(outputs(run(prepared, tmp_path / "b", config, seed=1))[2])
    assert not np.isclose(other.train_loss.iloc[0], first.train_loss.iloc[0])


def test_learning_rate_schedule_steps(prepared, tmp_path):
    config = make_config(training={"epochs_finetune": 3}, cycles=0)  # the finetune is the whole run
    epochs = pd.read_csv(outputs(run(prepared, tmp_path, config))[2])
    lr = epochs[["lr_start", "lr_end"]].to_numpy()
    assert lr[0, 0] < lr[0, 1]  # one-cycle warms up during epoch 1
    assert lr[-1, 1] < lr[1, 0] / 100  # and anneals to almost nothing at the end
    assert (lr[1:, 0] == lr[:-1, 1]).all()


def test_nan_loss_stops_without_checkpoint(prepared, tmp_path):
    config = make_config()
    config["models"]["lite0"]["lr"] = 1e30
    config["models"]["lite0"]["optimizer"] = "sgd"
    config["models"]["lite0"]["schedule"] = "constant"
    with pytest.raises(NonFiniteLossError, match="lr"):
        run(prepared, tmp_path, config)
    assert not (tmp_path / "model.safetensors").exists()


def test_resume_after_kill_gives_the_same_weights(prepared, tmp_path):
    """Kill a 3-epoch run after its first epoch; the rerun resumes and ends where an uninterrupted run ends."""
    config = make_config(training={"epochs_finetune": 3})
    script = f"""
import json, os, signal, sys
import proxyattention.stages.train as t
from proxyattention.settings.validate import validate
from proxyattention.analysis.curves import EPOCH_COLUMNS, epoch_curve
from proxyattention.settings.stage_settings import stage_settings
config = validate(json.loads({json.dumps(config)!r}))
real = t.predict_logits
calls = []
def killing(*a, **k):
    out = real(*a, **k)
    calls.append(1)
    if len(calls) == 2:  # during epoch 2's validation: epoch 1's state is on disk
        os.kill(os.getpid(), signal.SIGKILL)
    return out
t.predict_logits = killing
p = {json.dumps({k: str(v) for k, v in prepared.items()})}
out = {json.dumps(str(tmp_path / 'killed'))}
t.train(stage_settings(config, 'fm', 'lite0', 0), p['images'], p['index'], p['classes'],
        *[os.path.join(out, n) for n in ('model.safetensors', 'model.json', 'epochs.csv', 'train_stats.json')], seed=0)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = tmp_path / "killed"
    assert (killed / ".train_state" / "state.pt").exists()
    assert not (killed / "model.safetensors").exists()
    run(prepared, killed, config)
    run(prepared, tmp_path / "straight", config)
    assert json.loads((killed / "train_stats.json").read_text())["resumed_from_epoch"] == 1
    a, b = load_file(killed / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not (killed / ".train_state").exists()


def test_an_unreadable_resume_state_starts_the_stage_over(prepared, trained, tmp_path, caplog):
    """#27.11: a state.pt left empty by a node crash failed every rerun with EOFError; now the
    stage logs it and starts over, ending where a run without it ends."""
    import logging

    folder = tmp_path / "crashed"
    (folder / ".train_state").mkdir(parents=True)
    (folder / ".train_state" / "state.pt").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="proxyattention.stages.train"):
        run(prepared, folder, trained["config"])
    assert "cannot read" in caplog.text and "state.pt" in caplog.text
    assert (folder / "model.safetensors").read_bytes() == trained["weights"].read_bytes()
    assert not (folder / ".train_state").exists()


def test_retrain_adds_erased_images(prepared, trained, tmp_path):
    images = np.load(prepared["images"])[:7]
    np.savez(tmp_path / "erased.npz", images=images, labels=np.arange(7), index=np.arange(7))
    config = trained["config"]
    run(prepared, tmp_path / "r", config, cycle=1, init_weights=trained["weights"], init_meta=trained["meta"],
        extra=[tmp_path / "erased.npz"])
    stats = json.loads((tmp_path / "r" / "train_stats.json").read_text())
    assert stats["n_train_original"] == 500 and stats["n_train_extra"] == 7 and stats["images_seen"] == 507


def batch_orders(prepared, trained, tmp_path, monkeypatch, cycle, name, extra=()):
    """What a retrain of ``cycle`` draws: per training batch, its key, the indices, and the images
    and crop/flip plan it got."""
    from proxyattention.data import batches as data

    drawn = []
    real = data.BatchDataset.__getitem__

    def record(self, key):
        x, y, plan = real(self, key)
        if self.train:  # validation batches are neither shuffled nor augmented
            drawn.append((key[0], key[1], list(key[2]), x.numpy().copy(), plan.numpy().copy()))
        return x, y, plan

    monkeypatch.setattr(data.BatchDataset, "__getitem__", record)
    config = make_config(training={"epochs": 1, "num_workers": 0})
    run(prepared, tmp_path / name, config, cycle=cycle, init_weights=trained["weights"], init_meta=trained["meta"],
        extra=list(extra))
    monkeypatch.undo()
    return drawn


def per_image(drawn, below: int):
    """The sequence of image indices below ``below`` (the originals), and each one's plan row."""
    order = [i for d in drawn for i in d[2] if i < below]
    plans = {i: tuple(row) for d in drawn for i, row in zip(d[2], d[4]) if i < below}
    return order, plans


def test_each_cycle_draws_a_fresh_stream_and_arms_share_it(prepared, trained, tmp_path, monkeypatch):
    """Shuffling and augmentation are keyed by (seed, cycle, purpose, epoch): cycle 2 does not
    replay cycle 1's stream; within a cycle, an arm that adds images (here 7) sees the 500
    original images in the same relative order with the same crop and flip each as baseline."""
    images = np.load(prepared["images"])[:7]
    np.savez(tmp_path / "erased.npz", images=255 - images, labels=np.arange(7), index=np.arange(7))
    one = batch_orders(prepared, trained, tmp_path, monkeypatch, 1, "a")
    same = batch_orders(prepared, trained, tmp_path, monkeypatch, 1, "b")
    adding = batch_orders(prepared, trained, tmp_path, monkeypatch, 1, "d", extra=[tmp_path / "erased.npz"])
    two = batch_orders(prepared, trained, tmp_path, monkeypatch, 2, "c")
    assert [d[2] for d in one] == [d[2] for d in same]
    assert all((a[3] == b[3]).all() and (a[4] == b[4]).all() for a, b in zip(one, same))
    base_order, base_plans = per_image(one, 500)
    add_order, add_plans = per_image(adding, 500)
    assert sorted(base_order) == list(range(500)) and add_order == base_order
    assert add_plans == base_plans and len({p for p in base_plans.values()}) > 20
    added = [i for d in adding for i in d[2] if i >= 500]
    assert sorted(added) == list(range(500, 507))
    assert [d[2] for d in adding] != [d[2] for d in one]  # the added images move the batch boundaries
    assert [d[2] for d in one] != [d[2] for d in two]
    assert sum((a[4] != b[4]).any() for a, b in zip(one, two)) == len(one)
    weights = [load_file(tmp_path / n / "model.safetensors") for n in "abc"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_every_random_stream_of_an_epoch_has_a_key_of_its_own(prepared, trained, tmp_path, monkeypatch):
    """#22.7: the epoch's shuffle was keyed (seed, cycle, epoch, 7), which was also batch 7's
    crop-and-flip key. Every generator one training epoch creates now has a distinct key."""
    images = np.load(prepared["images"])[:7]
    np.savez(tmp_path / "erased.npz", images=images, labels=np.arange(7), index=np.arange(7))
    keys = []
    real = np.random.default_rng

    def recording(seed=None):
        keys.append(tuple(seed) if isinstance(seed, (tuple, list)) else seed)
        return real(seed)

    monkeypatch.setattr(np.random, "default_rng", recording)
    config = make_config(training={"epochs": 1, "num_workers": 0})
    run(prepared, tmp_path / "r", config, cycle=1, init_weights=trained["weights"], init_meta=trained["meta"],
        extra=[tmp_path / "erased.npz"])
    monkeypatch.undo()
    assert len(keys) >= 4  # the originals' order and plan, the added images' order and plan
    assert len(set(keys)) == len(keys), keys


def test_resume_state_belongs_to_the_inputs_content(prepared, trained, tmp_path, monkeypatch):
    """A retrain stopped after its epoch leaves its state; a rerun with the same erased.npz resumes
    it, one whose erased.npz was rewritten with other pixels of the same size starts over."""
    import proxyattention.stages.train as t

    images = np.load(prepared["images"])[:6]
    extra = tmp_path / "erased.npz"
    config = trained["config"]
    kwargs = dict(cycle=1, init_weights=trained["weights"], init_meta=trained["meta"], extra=[extra])

    def stopped_run(folder):
        def killed(*args, **kw):
            raise KeyboardInterrupt  # as if killed after the state was written, before the checkpoint

        monkeypatch.setattr(t, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            run(prepared, folder, config, **kwargs)
        monkeypatch.undo()
        state = torch.load(folder / ".train_state" / "state.pt", weights_only=True)
        assert state["precision"] == "fp32" and state["cuda_rng"] is None and state["epoch"] == 1

    np.savez(extra, images=images, labels=np.arange(6), index=np.arange(6))
    stopped_run(tmp_path / "same")
    run(prepared, tmp_path / "same", config, **kwargs)
    assert json.loads((tmp_path / "same" / "train_stats.json").read_text())["resumed_from_epoch"] == 1

    stopped_run(tmp_path / "changed")
    size = extra.stat().st_size
    np.savez(extra, images=255 - images, labels=np.arange(6), index=np.arange(6))
    assert extra.stat().st_size == size
    run(prepared, tmp_path / "changed", config, **kwargs)
    assert json.loads((tmp_path / "changed" / "train_stats.json").read_text())["resumed_from_epoch"] == 0
