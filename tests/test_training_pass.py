"""The training-pass record (training/record.py) against the separate passes it stands in for, its
geometry, its cost in device waits, and the checkpoint it must leave untouched."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import make_config

from proxyattention.data.batches import ArraySource, augment, epoch_plan, make_loader
from proxyattention.data.erasing import threshold_masks
from proxyattention.files.artifacts import load_prepared
from proxyattention.models.build import load_checkpoint
from proxyattention.models.cams import GapLinearCAM, _minmax, build_cam, compute_maps, final_feature_layer
from proxyattention.runtime.device import select_runtime
from proxyattention.settings.schema import ConfigError
from proxyattention.settings.stage_settings import stage_settings
from proxyattention.stages.find_misclassified import prediction_table, select
from proxyattention.stages.from_record import record_table, upsample, view_to_original
from proxyattention.stages.train import train
from proxyattention.training.loop import train_one_epoch
from proxyattention.training.record import TrainingPassRecorder

TP = {"kind": "proxy", "cam_method": "gradcam_loss", "maps_source": "training_pass",
      "selection": {"source": "training_pass"}}


class Constant:
    """A scheduler that changes nothing (the tests train at learning rate 0)."""

    def step(self):
        pass


@pytest.fixture(scope="module")
def prepared64(tmp_path_factory):
    """The demo data at 64 px, where lite0's pooled map is 2 x 2 (at 32 px it is 1 x 1)."""
    from proxyattention.stages.prepare import prepare

    out = tmp_path_factory.mktemp("prepared64")
    config = make_config(datasets={"fm": {**make_config()["datasets"]["fm"], "image_size": 64}})
    prepare(config["datasets"]["fm"], out / "images.npy", out / "index.csv", out / "classes.json", out / "skipped.csv")
    return {"images": out / "images.npy", "index": out / "index.csv", "classes": out / "classes.json"}


def frozen_model(trained):
    """The trained checkpoint with every module kept in eval mode (BatchNorm on its running
    statistics, no dropout) even when the loop calls train(): the training forward then equals
    the separate pass's."""
    model, info = load_checkpoint(trained["weights"], trained["meta"])
    model.eval()
    model.train = lambda mode=True: model
    return model, info


def record_epoch(model, info, prepared, maps, layer=None, target="label", hflip=False, padding=0, n=200,
                 batch=50, seed=(0, 1)):
    images, index = load_prepared(prepared["images"], prepared["index"])
    train_rows = index[index.split == "train"].head(n)
    source = ArraySource([(images, train_rows["index"].to_numpy(), train_rows["label"].to_numpy())])
    loader, sampler = make_loader(source, info["mean"], info["std"], batch, seed=seed, train=True, hflip=hflip,
                                  crop_padding=padding, with_rows=True)
    sampler.set_epoch(0)
    runtime = select_runtime("fp32", False, "cpu", False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    recorder = TrainingPassRecorder(model, len(source), "cpu", maps, layer, target)
    try:
        train_one_epoch(model, loader, optimizer, Constant(), runtime.grad_scaler(), runtime, recorder=recorder)
    finally:
        recorder.close()
    record = recorder.result(source.n_original)
    record.update(index=train_rows["index"].to_numpy(), label=train_rows["label"].to_numpy(),
                  plan=epoch_plan(seed, 0, len(source), len(source), hflip, padding), layer=recorder.layer)
    return record, images, train_rows, source


def test_record_selects_and_maps_what_the_separate_passes_do(trained, prepared64):
    """BatchNorm in eval mode, learning rate 0, no augmentation: the training forward is the
    separate pass's, so the selection and the cam maps must be theirs."""
    from proxyattention.models.inference import predict_logits

    model, info = frozen_model(trained)
    info["image_size"] = 64
    record, images, rows, source = record_epoch(model, info, prepared64, "cam")
    assert (record["met"] >= 0).all() and sorted(record["met"]) == list(range(len(rows)))
    runtime = select_runtime("fp32", False, "cpu", False)
    logits = predict_logits(model, source, info["mean"], info["std"], 50, runtime)
    separate = prediction_table(logits, rows.reset_index(drop=True))
    index = pd.DataFrame({"index": rows["index"], "source": rows["source"]})
    recorded = record_table(record, index)
    np.testing.assert_array_equal(recorded["prediction"], separate["prediction"])
    np.testing.assert_allclose(recorded["loss"], separate["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recorded["true_probability"], separate["true_probability"], rtol=1e-5, atol=1e-7)
    for rule in ("misclassified", "low_confidence", "both"):
        want = select(separate, rule, 0.5, None, 0.5)
        got = select(recorded, rule, 0.5, None, 0.5)
        assert len(want) > 10 and list(got["index"]) == list(want["index"])
    # the cam maps: the separate pass's GapLinearCAM of the label, to float16 tolerance
    assert record["maps"].shape == (len(rows), 2, 2) and record["map_valid"].all()
    x = torch.from_numpy(np.stack([images[r] for r in rows["index"]])).float()
    x = (x / 255 - torch.tensor(info["mean"])) / torch.tensor(info["std"])
    reference = compute_maps(GapLinearCAM(model), model, x.permute(0, 3, 1, 2).contiguous(), list(rows["label"]))
    got = view_to_original(upsample(record["maps"].astype(np.float32), 64), record["plan"], 0)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, reference, atol=3e-3)
    assert reference.max() > 0.99 and np.ptp(reference, axis=(1, 2)).mean() > 0.5


def test_a_map_recorded_on_a_cropped_flipped_view_comes_back_to_its_image(trained, prepared64):
    model, info = frozen_model(trained)
    record, images, rows, source = record_epoch(model, info, prepared64, "cam", hflip=True, padding=8, n=100)
    plan = record["plan"]
    assert plan[:, 2].any() and (plan[:, 2] == 0).any() and (plan[:, :2] != 8).any()  # flips, shifts, both kinds
    originals = np.stack([images[r] for r in rows["index"]])
    views = augment(originals, plan, 8)
    x = torch.from_numpy(views).float()
    x = ((x / 255 - torch.tensor(info["mean"])) / torch.tensor(info["std"])).permute(0, 3, 1, 2).contiguous()
    on_view = compute_maps(GapLinearCAM(model), model, x, list(rows["label"]))
    want = view_to_original(on_view, plan, 8)
    got = view_to_original(upsample(record["maps"].astype(np.float32), 64), plan, 8)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], atol=3e-3)


def test_view_to_original_inverts_the_crop_and_flip_exactly(prepared):
    images, index = load_prepared(prepared["images"], prepared["index"])
    originals = np.asarray(images[:40])
    plan = epoch_plan((3, 1), 0, 40, 40, True, 4)
    views = augment(originals, plan, 4)[..., 0].astype(np.float32)  # the view of channel 0, as a "map"
    back = view_to_original(views, plan, 4)
    covered = ~np.isnan(back)
    np.testing.assert_array_equal(back[covered], originals[..., 0][covered].astype(np.float32))
    # exactly the pixels the view showed: (32 - |dy - 4|) x (32 - |dx - 4|) per image
    want = (32 - np.abs(plan[:, 0] - 4)) * (32 - np.abs(plan[:, 1] - 4))
    np.testing.assert_array_equal(covered.reshape(40, -1).sum(1), want)
    # thresholds over the covered pixels only; an uncovered pixel is never masked
    masks, _ = threshold_masks(back, "topk_area", 0.9)
    assert not (masks & ~covered).any()
    np.testing.assert_array_equal(masks.reshape(40, -1).sum(1), np.rint(0.1 * want))
    qmasks, _ = threshold_masks(back, "quantile", 0.9)
    assert not (qmasks & ~covered).any() and qmasks.any()


def gradcam_from(activation, grad):
    weights = (-grad).mean(dim=(2, 3))
    return _minmax(torch.einsum("bk,bkhw->bhw", weights, activation).clamp_min(0)).numpy()


def test_gradcam_loss_is_the_batch_loss_gradient_slice_and_in_eval_mode_image_i_s_own(trained, prepared):
    model, info = load_checkpoint(trained["weights"], trained["meta"])
    layer = "blocks.4.0.bn1"  # a 2 x 2 map at 32 px, below later BatchNorms
    record, images, rows, source = record_epoch(model, info, prepared, "gradcam_loss", layer=layer, n=50, batch=50)
    assert record["map_valid"].all() and record["maps"].shape[1:] == (2, 2)
    # the same batch, in train mode, from the same starting weights (lr 0, so unchanged)
    model.train()
    loader, sampler = make_loader(source, info["mean"], info["std"], 50, seed=(0, 1), train=True, with_rows=True)
    sampler.set_epoch(0)
    x, y, batch_rows = next(iter(loader))
    held = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: held.setdefault("a", o))
    loss = F.cross_entropy(model(x), y)
    hook.remove()
    (grad,) = torch.autograd.grad(loss, held["a"])
    want = gradcam_from(held["a"].detach(), grad)
    got = record["maps"][batch_rows.numpy()].astype(np.float32)
    # 5e-3, not 1e-3: a cell of a 2 x 2 map sums hundreds of channels' products that mostly cancel,
    # so another CPU's kernels (the CI's) move single cells by up to 0.4% (seen: 0.99588 vs 1.0)
    np.testing.assert_allclose(got, want, atol=5e-3)
    # ... and that tolerance still tells the batch loss's slice from image i's own loss under the
    # same batch statistics (what a per-image backward in train mode would record)
    own = []
    for i in range(8):
        held.clear()
        hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, i_, o: held.setdefault("a", o))
        loss_i = F.cross_entropy(model(x)[i : i + 1], y[i : i + 1])
        hook.remove()
        (g,) = torch.autograd.grad(loss_i, held["a"])
        own.append(gradcam_from(held["a"].detach()[i : i + 1], g[i : i + 1])[0])
    assert np.abs(np.stack(own) - got[:8]).max() > 10 * 5e-3
    # in eval mode image i's slice is the gradient of image i's own loss alone
    frozen, _ = frozen_model(trained)
    record, *_ = record_epoch(frozen, info, prepared, "gradcam_loss", layer=layer, n=50, batch=50)
    for i in (0, 7, 31):
        held.clear()
        hook = dict(frozen.named_modules())[layer].register_forward_hook(lambda m, i_, o: held.setdefault("a", o))
        own = F.cross_entropy(frozen(x[i : i + 1]), y[i : i + 1])
        hook.remove()
        (g,) = torch.autograd.grad(own, held["a"])
        np.testing.assert_allclose(record["maps"][int(batch_rows[i])].astype(np.float32),
                                   gradcam_from(held["a"].detach(), g)[0], atol=1e-3)
    # and the separate pass's gradcam_loss (Grad-CAM of log p(label)) is the same map, upsampled
    cam = build_cam(frozen, "gradcam_loss", layer, 32, fast_path=True)
    separate = compute_maps(cam, frozen, x[:4], [int(v) for v in y[:4]])
    got = upsample(record["maps"][batch_rows.numpy()[:4]].astype(np.float32), 32)
    np.testing.assert_allclose(got, separate, atol=3e-3)


def test_the_loop_waits_on_the_device_no_more_often_with_recording(trained, prepared, monkeypatch):
    """The host reads device values only at the loop's fixed checks, whatever the number of steps."""
    counts = {}
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            counts[_name] = counts.get(_name, 0) + 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    waits = []
    for n in (100, 200):
        model, info = load_checkpoint(trained["weights"], trained["meta"])
        images, index = load_prepared(prepared["images"], prepared["index"])
        rows = index[index.split == "train"].head(n)
        source = ArraySource([(images, rows["index"].to_numpy(), rows["label"].to_numpy())])
        loader, sampler = make_loader(source, info["mean"], info["std"], 25, seed=(0, 1), train=True, hflip=True,
                                      crop_padding=4, with_rows=True)
        runtime = select_runtime("fp32", False, "cpu", False)
        recorder = TrainingPassRecorder(model, n, "cpu", "gradcam_loss", "blocks.4.0.bn1")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        counts.clear()
        train_one_epoch(model, loader, optimizer, Constant(), runtime.grad_scaler(), runtime, recorder=recorder)
        waits.append(dict(counts))
        recorder.close()
    assert waits[0] == waits[1], f"4 steps vs 8 steps: {waits}"
    assert waits[0].get("item", 0) >= 2  # the counter counts: the loop's end-of-epoch reads


def test_the_checkpoint_is_byte_identical_with_or_without_recording(prepared, tmp_path):
    config = make_config(arms={"baseline": {"kind": "baseline"}, "tp": TP})
    settings = stage_settings(config, "fm", "lite0", 0, "train", "finetune")
    assert settings["record"] == {"maps": "gradcam_loss", "layer": "auto", "target": "label"}
    plain = {k: v for k, v in settings.items() if k != "record"}
    out = {}
    for name, s in (("with", settings), ("without", plain)):
        folder = tmp_path / name
        train(s, prepared["images"], prepared["index"], prepared["classes"], folder / "model.safetensors",
              folder / "model.json", folder / "epochs.csv", folder / "stats.json", seed=0,
              out_optimizer=folder / "optimizer.safetensors", out_record=folder / "training_pass.npz")
        out[name] = folder
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (out["with"] / name).read_bytes() == (out["without"] / name).read_bytes()
    with np.load(out["with"] / "training_pass.npz") as rec, np.load(out["without"] / "training_pass.npz") as none:
        assert bool(rec["recorded"]) and not bool(none["recorded"])
        assert rec["maps"].shape[0] == len(rec["index"]) == 500 and (rec["met"] >= 0).all()
        assert str(rec["layer"]) == "blocks.5.0.bn1"


def test_a_killed_job_resumed_after_its_last_save_still_writes_the_record(prepared, tmp_path, monkeypatch):
    import proxyattention.stages.train as t

    config = make_config(arms={"tp": TP})
    settings = stage_settings(config, "fm", "lite0", 0, "train", "finetune")
    folder = tmp_path / "run"
    args = (prepared["images"], prepared["index"], prepared["classes"], folder / "model.safetensors",
            folder / "model.json", folder / "epochs.csv", folder / "stats.json")

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(t, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train(settings, *args, seed=0, out_record=folder / "first.npz")
    monkeypatch.undo()
    assert (folder / ".train_state" / "state.pt").exists()
    train(settings, *args, seed=0, out_record=folder / "training_pass.npz")
    import json

    assert json.loads((folder / "stats.json").read_text())["resumed_from_epoch"] == 1
    uninterrupted = tmp_path / "once"
    train(settings, *(a if i < 3 else uninterrupted / a.name for i, a in enumerate(args)), seed=0,
          out_record=uninterrupted / "training_pass.npz")
    with np.load(folder / "training_pass.npz") as a, np.load(uninterrupted / "training_pass.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("arm,message", [
    ({"kind": "proxy", "maps_source": "training_pass"}, "records only the methods cam, gradcam_loss"),
    ({**TP, "target": "prediction"}, "set target: label"),
    ({**TP, "empty_maps": "explain_prediction"}, "use skip or keep"),
    ({"kind": "proxy", "selection": {"order": "met"}}, "needs selection.source: training_pass"),
])
def test_settings_the_training_pass_cannot_record_are_refused_by_name(arm, message):
    from proxyattention.settings.validate import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(make_config(arms={"x": arm}))


def test_arms_that_read_one_finetune_must_ask_it_for_one_kind_of_map():
    from proxyattention.settings.validate import check_config

    config = make_config(arms={"a": TP, "b": {**TP, "cam_method": "cam"}})
    with pytest.raises(ConfigError, match="records one kind of map"):
        check_config(config)


def test_cam_is_the_pooled_layer_s_map_and_refused_without_a_gap_linear_head():
    from proxyattention.settings.model_checks import ModelCheckError, check_models

    config = make_config(arms={"c": {**TP, "cam_method": "cam"}},
                         models={"vit": {"timm_name": "vit_tiny_patch16_224", "weights": "none", "batch_size": 8}})
    with pytest.raises(ModelCheckError, match="models.vit.*no global-average-pool \\+ linear head"):
        check_models(config)
    config = make_config(arms={"c": {**TP, "cam_method": "cam"}},
                         models={"lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "bundled",
                                           "target_layer": "blocks.4.0.bn1"}})
    with pytest.raises(ModelCheckError, match="exists only at the pooled layer"):
        check_models(config)
    import timm

    lite0 = timm.create_model("tf_efficientnet_lite0", num_classes=3)
    assert final_feature_layer(lite0, 64) == "bn2"


TP_ARMS = {"baseline": {"kind": "baseline"}, "tp": {**TP, "selection": {"source": "training_pass", "order": "met",
                                                                      "max_fraction": 0.5}},
           "tp_random": {"kind": "random_erase", "matches": "tp"}, "proxy": {"kind": "proxy"}}


def test_a_dag_with_a_training_pass_arm_runs_without_its_separate_passes(tmp_path):
    from conftest import run_dir, snakemake, tiny_config

    tiny_config(tmp_path, arms=TP_ARMS, seeds=[0], cycles=2, report={"comparisons": [["tp", "proxy"]]})
    plan = snakemake(tmp_path, "-n", "--quiet", "rules").stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", plan, re.M))
    # find/CAM only for the separate-pass arm (proxy) in its 2 cycles; the record's stages for tp and
    # tp_random (cycle 1 shared: 1 + 2 selections; maps: tp's own, tp_random's shared in cycle 1)
    assert jobs["find_misclassified"] == "2" and jobs["compute_cams"] == "2", plan
    assert jobs["select_from_record"] == "3" and jobs["maps_from_record"] == "3", plan
    assert jobs["agreement"] == "2", plan  # the proxy-kind training-pass arm's two cycles
    snakemake(tmp_path)
    tp1 = run_dir(tmp_path, "tp", 0, 1)
    for arm in ("tp", "tp_random"):
        for cycle in (1, 2):
            folder = run_dir(tmp_path, arm, 0, cycle)
            assert not (tmp_path / f"results/logs/find_misclassified/fm/lite0/seed0/{arm}/cycle{cycle}.log").exists()
            assert not (tmp_path / f"results/logs/compute_cams/fm/lite0/seed0/{arm}/cycle{cycle}.log").exists()
            assert (folder / "erased.npz").exists()
    with np.load(run_dir(tmp_path, "finetune", 0, 0) / "training_pass.npz") as rec:
        assert bool(rec["recorded"]) and str(rec["method"]) == "gradcam_loss"
        met = rec["met"]
    selected = pd.read_csv(tp1 / "selected.csv")
    assert list(selected["met"]) == sorted(selected["met"]) and len(selected) > 0  # the first met, in order
    erased = pd.read_csv(tp1 / "erased.csv")
    assert (erased.covered_fraction < 1).any() and (erased.covered_fraction > 0.5).all()
    control = pd.read_csv(run_dir(tmp_path, "tp_random", 0, 1) / "erased.csv")
    assert list(control["index"]) == list(erased["index"])  # same images, moved masks
    with np.load(run_dir(tmp_path, "proxy", 0, 2) / "training_pass.npz") as none:
        assert not bool(none["recorded"])  # the separate-pass arm's retrain records nothing
    with np.load(run_dir(tmp_path, "tp", 0, 2) / "training_pass.npz") as last:
        assert not bool(last["recorded"])  # nothing reads the last cycle's record
    with np.load(run_dir(tmp_path, "tp", 0, 1) / "training_pass.npz") as mid:
        assert bool(mid["recorded"])
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    tp_rows = summary[(summary.arm == "tp") & (summary.cycle > 0)]
    assert len(tp_rows) == 2 and tp_rows.proxy_seconds.notna().all()
    # the agreement with the separate passes, in the summary of the arm it was measured for
    agreed = json.loads((tp1 / "agreement.json").read_text())
    assert agreed["n_selected_record"] == len(selected) and 0 < agreed["n_maps"] <= 200
    assert 0 <= agreed["jaccard_rule"] <= 1 and 0 <= agreed["jaccard_selected"] <= 1
    assert -1 <= agreed["map_spearman"] <= 1 and 0 <= agreed["map_iou_top10"] <= 1
    assert tp_rows.agree_jaccard_rule.notna().all() and tp_rows.agree_map_iou_top10.notna().all()
    assert summary[summary.arm == "proxy"].agree_jaccard_rule.isna().all()
    assert not (tmp_path / "results/logs/agreement/fm/lite0/seed0/tp/cycle1.log").read_text().count("Traceback")
    # the arm-to-arm comparison asked for by name, with its MDE, in the verdicts and the answer
    verdict = pd.read_csv(tmp_path / "results" / "tables" / "fm_verdicts.csv")
    assert {"tp - proxy", "tp - baseline", "tp - tp_random", "proxy - baseline"} <= set(verdict.comparison)
    assert (verdict[verdict.comparison == "tp - proxy"].n_pairs == 1).all()  # one seed: a row, no MDE yet
    assert "tp minus proxy" in (tmp_path / "results" / "tables" / "fm_answer.md").read_text()
    assert len(met) == 500
    # by hand, as README says: the record's stages rewrite what the workflow wrote, byte for byte;
    # the separate pass's stage is refused for this arm, naming the one to run
    from test_workflow import by_hand

    cell = ["--dataset", "fm", "--model", "lite0", "--seed", "0", "--arm", "tp", "--cycle", "2"]
    tp2 = run_dir(tmp_path, "tp", 0, 2)
    for stage, name in (("select-from-record", "selected.csv"), ("maps-from-record", "cams.npz")):
        kept = (tp2 / name).read_bytes()
        (tp2 / name).unlink()
        proc = by_hand(tmp_path, stage, *cell)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (tp2 / name).read_bytes() == kept, name
    proc = by_hand(tmp_path, "find-misclassified", *cell)
    assert proc.returncode == 2 and "rerun select-from-record" in proc.stderr, proc.stderr


def test_a_step_the_grad_scaler_skips_marks_its_maps_invalid(trained, prepared64):
    """The cam maps come from the forward and stay finite; only the scaler's own record of inf
    gradients (its scale overflows float32 here, so it skips every step) can mark them invalid."""
    model, info = load_checkpoint(trained["weights"], trained["meta"])
    images, index = load_prepared(prepared64["images"], prepared64["index"])
    rows = index[index.split == "train"].head(100)
    source = ArraySource([(images, rows["index"].to_numpy(), rows["label"].to_numpy())])
    runtime = select_runtime("fp32", False, "cpu", False)
    valid = {}
    for name, scale in (("overflowing", 3e38), ("plain", 1.0)):
        loader, sampler = make_loader(source, info["mean"], info["std"], 50, seed=(0, 1), train=True, with_rows=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=1000)
        recorder = TrainingPassRecorder(model, len(source), "cpu", "cam")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        train_one_epoch(model, loader, optimizer, Constant(), scaler, runtime, recorder=recorder)
        recorder.close()
        result = recorder.result(len(source))
        assert np.isfinite(result["maps"].astype(np.float32)).all()
        valid[name] = result["map_valid"]
    assert not valid["overflowing"].any() and valid["plain"].all()
