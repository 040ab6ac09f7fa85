"""#23: the finetune and every cycle as one training run: one learning-rate schedule over the
run's epochs, each job its slice, the optimizer's state carried across the process boundary."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_config
from safetensors.torch import load_file

from proxyattention.settings.schema import ConfigError
from proxyattention.settings.stage_settings import schedule_span, stage_settings
from proxyattention.settings.validate import check_config
from proxyattention.stages.train import train
from proxyattention.training import optimizer_state
from proxyattention.training.schedules import RunSchedule, shape


def lrs_of_jobs(kind, jobs, steps_per_epoch, total):
    """Per-step learning rates of consecutive jobs (their epochs) sharing one schedule."""
    out, epoch = [], 0
    for n_epochs, spe in zip(jobs, steps_per_epoch):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        schedule = RunSchedule(opt, kind, 1e-3, epoch, total)
        for e in range(epoch, epoch + n_epochs):
            schedule.begin_epoch(e, spe)
            for _ in range(spe):
                out.append(opt.param_groups[0]["lr"])
                schedule.step()
        epoch += n_epochs
    return np.array(out)


@pytest.mark.parametrize("kind", ["onecycle", "cosine", "constant"])
def test_jobs_that_continue_a_schedule_equal_one_uninterrupted_run(kind):
    """A finetune of 2 epochs and cycles of 1, 2 and 1 epochs: the concatenated per-step rates
    equal one run of 6 epochs, exactly."""
    jobs = [2, 1, 2, 1]
    split = lrs_of_jobs(kind, jobs, [10] * 4, 6)
    whole = lrs_of_jobs(kind, [6], [10], 6)
    np.testing.assert_array_equal(split, whole)


def test_the_onecycle_shape_is_torchs():
    """Against torch's OneCycleLR over the same 60 steps: the same curve, up to a step's worth."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=60)
    theirs = []
    for _ in range(60):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step() if len(theirs) < 60 else None
    ours = lrs_of_jobs("onecycle", [6], [10], 6)
    assert ours[0] == pytest.approx(theirs[0]) and max(ours) == pytest.approx(1e-3, rel=1e-2)
    assert np.abs(ours - np.array(theirs)).max() < 1e-3 * 0.06  # within 6% of the peak at any step


def test_epoch_boundaries_do_not_depend_on_how_many_images_an_arm_adds():
    """An adding arm's cycle has more steps per epoch; at each epoch boundary its rate is the
    baseline's, since the position is counted in epochs."""
    base = lrs_of_jobs("onecycle", [2, 1, 1], [10, 10, 10], 4)
    adding = lrs_of_jobs("onecycle", [2, 1, 1], [10, 13, 12], 4)
    assert base[20] == adding[20] == pytest.approx(1e-3 * shape("onecycle", 2 / 4)[0])
    assert base[30] == adding[33] == pytest.approx(1e-3 * shape("onecycle", 3 / 4)[0])


def test_spans_and_the_settings_that_carry_them():
    config = make_config(training={"epochs_finetune": 3, "epochs": [2, 1, 4]}, cycles=3)
    assert [schedule_span(config, c) for c in range(4)] == [
        {"mode": "continue", "start_epoch": s, "total_epochs": 10} for s in (0, 3, 5, 6)]
    # editing the last cycle's epochs changes every job's settings: the whole run retrains
    longer = make_config(training={"epochs_finetune": 3, "epochs": [2, 1, 5]}, cycles=3)
    for cycle in range(4):
        assert stage_settings(config, "fm", "lite0", cycle, "train") != stage_settings(longer, "fm", "lite0", cycle,
                                                                                       "train")
    restart = make_config(training={"epochs_finetune": 3, "epochs": [2, 1, 4], "cycle_mode": "restart"}, cycles=3)
    restart_longer = make_config(training={"epochs_finetune": 3, "epochs": [2, 1, 5], "cycle_mode": "restart"},
                                 cycles=3)
    assert [stage_settings(restart, "fm", "lite0", c, "train") == stage_settings(restart_longer, "fm", "lite0", c,
                                                                                   "train") for c in range(4)] == \
        [True, True, True, False]
    assert schedule_span(restart, 2) == {"mode": "restart", "start_epoch": 0, "total_epochs": 1}


def test_continue_with_pretrained_restarts_is_refused():
    config = make_config(training={"retrain_from": "pretrained"})
    with pytest.raises(ConfigError, match="cycle_mode: restart"):
        check_config(config)


def outputs(folder):
    return [folder / n for n in ("model.safetensors", "model.json", "epochs.csv", "train_stats.json")]


def test_the_optimizer_state_round_trips_exactly(trained, tmp_path):
    """What the next cycle loads is what the last one ended with: every moment, step count and
    hyperparameter, the scaler and the schedule's position."""
    from proxyattention.models.build import load_checkpoint

    model, _ = load_checkpoint(trained["weights"], trained["meta"])
    first = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    saved = optimizer_state.load(trained["optimizer"], first, scaler)
    assert saved["position"] == pytest.approx(1.0) and saved["total"] == 3.0  # 1 of the run's 3 epochs
    optimizer_state.save(tmp_path / "again.safetensors", first, scaler, RunSchedule(first, "onecycle", 1e-3, 1, 3))
    second = torch.optim.AdamW(model.parameters(), lr=5.0)
    optimizer_state.load(tmp_path / "again.safetensors", second, scaler)
    a, b = first.state_dict(), second.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for name, value in a["state"][index].items():
            assert torch.equal(value, b["state"][index][name]), (index, name)
    steps = {float(v["step"]) for v in a["state"].values()}
    assert steps == {10.0}  # 500 images / batch 50: the finetune's 10 steps
    with pytest.raises(ValueError, match="another model"):
        optimizer_state.load(trained["optimizer"], torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]), scaler)


def test_a_cycle_continues_the_finetunes_run(prepared, trained, tmp_path, monkeypatch):
    """Cycle 1 under continue starts where the finetune's schedule stopped and its per-step
    rates continue the finetune's into one schedule of the run's 3 epochs; under restart it
    starts a fresh warm-up."""
    config = trained["config"]
    recorded = []
    real_step = RunSchedule.step

    def record(self):
        recorded.append(self.optimizer.param_groups[0]["lr"])
        real_step(self)

    monkeypatch.setattr(RunSchedule, "step", record)
    train(stage_settings(config, "fm", "lite0", 1, "train"), prepared["images"], prepared["index"],
          prepared["classes"], *outputs(tmp_path / "c1"), seed=0, init_weights=trained["weights"],
          init_meta=trained["meta"], init_optimizer=trained["optimizer"], out_optimizer=tmp_path / "c1" / "opt")
    monkeypatch.undo()
    finetune = pd.read_csv(trained["epochs"])
    cycle = pd.read_csv(tmp_path / "c1" / "epochs.csv")
    assert cycle.lr_start.iloc[0] == pytest.approx(finetune.lr_end.iloc[-1], rel=1e-12)
    assert cycle.run_epoch.tolist() == [2]
    np.testing.assert_allclose(recorded, lrs_of_jobs("onecycle", [3], [10], 3)[10:20], rtol=1e-15)
    state = load_file(tmp_path / "c1" / "opt")
    assert float(state["state.0.step"]) == 20.0  # AdamW's step count went on from the finetune's 10
    restart = make_config(training={"cycle_mode": "restart"})
    train(stage_settings(restart, "fm", "lite0", 1, "train"), prepared["images"], prepared["index"],
          prepared["classes"], *outputs(tmp_path / "r1"), seed=0, init_weights=trained["weights"],
          init_meta=trained["meta"])
    assert pd.read_csv(tmp_path / "r1" / "epochs.csv").lr_start.iloc[0] == pytest.approx(1e-3 / 25)
    assert json.loads((tmp_path / "c1" / "train_stats.json").read_text())["epochs"] == 1


def test_a_continued_cycle_killed_mid_run_resumes_to_the_same_bytes(prepared, trained, tmp_path, monkeypatch):
    """Killed after the first of its two epochs, a continued cycle resumes (optimizer state from
    the finetune, its own state from .train_state) to the weights and optimizer state of a
    straight run, byte for byte."""
    import proxyattention.stages.train as t

    config = make_config(training={"epochs": 2})
    kwargs = dict(seed=0, init_weights=trained["weights"], init_meta=trained["meta"],
                  init_optimizer=trained["optimizer"])
    settings = stage_settings(config, "fm", "lite0", 1, "train")
    real = t.train_one_epoch
    calls = []

    def dies_after_one(*args, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(t, "train_one_epoch", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        train(settings, prepared["images"], prepared["index"], prepared["classes"], *outputs(tmp_path / "k"),
              out_optimizer=tmp_path / "k" / "opt", **kwargs)
    monkeypatch.undo()
    train(settings, prepared["images"], prepared["index"], prepared["classes"], *outputs(tmp_path / "k"),
          out_optimizer=tmp_path / "k" / "opt", **kwargs)
    train(settings, prepared["images"], prepared["index"], prepared["classes"], *outputs(tmp_path / "s"),
          out_optimizer=tmp_path / "s" / "opt", **kwargs)
    assert json.loads((tmp_path / "k" / "train_stats.json").read_text())["resumed_from_epoch"] == 1
    for name in ("model.safetensors", "opt"):
        assert (tmp_path / "k" / name).read_bytes() == (tmp_path / "s" / name).read_bytes(), name


def test_the_thesis_config_is_the_protocol_docs_thesis_reads():
    """#23: config.thesis.yaml translates the thesis's final code (docs/thesis.md cites it)."""
    import yaml
    from conftest import ROOT

    from proxyattention.settings.stage_settings import epochs_for
    from proxyattention.settings.validate import validate

    config = validate(yaml.safe_load((ROOT / "config.thesis.yaml").read_text()))
    assert sum(epochs_for(config, c) for c in range(config["cycles"] + 1)) == 40  # [5,p,9,p,9,p,9,p,4] and [40]
    assert config["training"]["cycle_mode"] == "continue"  # each step reloads model and AdamW state
    for model in config["models"].values():  # OneCycleLR never stepped: a constant max_lr / 25
        assert (model["lr"], model["schedule"], model["weight_decay"]) == (2e-3 / 25, "constant", 1e-5)
    proxy = config["proxy"]
    assert (proxy["cam_method"], proxy["target"], proxy["selection"]["max_fraction"]) == ("gradcam++", "prediction", 0.2)
    assert proxy["threshold"] == {"mode": "value", "value": 0.85}
    assert proxy["fill"]["mode"] == "blend" and proxy["fill"]["blend_lambda"] == 0.1
    page = (ROOT / "docs" / "thesis.md").read_text()
    assert "ad87b31" in page and "meta_utils.py" in page and "1 − 0.8⁸" in page
