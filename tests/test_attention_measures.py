"""#25: Question 2's measures against hand computations."""

import numpy as np
import pandas as pd
import pytest
import torch

from proxyattention.analysis import attention_measures as am


def test_ece_equals_a_hand_computation():
    """Six predictions in three of 15 bins: |acc - conf| weighted by each bin's share."""
    confidence = np.array([0.05, 0.06, 0.50, 0.52, 0.99, 1.0])
    correct = np.array([0, 1, 1, 1, 1, 0])
    # bins: [0, 1/15) holds 0.05, 0.06; [7/15, 8/15) holds 0.50, 0.52; [14/15, 1] holds 0.99, 1.0
    hand = (2 / 6) * abs(0.5 - 0.055) + (2 / 6) * abs(1.0 - 0.51) + (2 / 6) * abs(0.5 - 0.995)
    assert am.expected_calibration_error(confidence, correct) == pytest.approx(hand)


def test_a_perfectly_calibrated_predictor_has_ece_near_zero():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, 200_000)
    correct = rng.random(200_000) < confidence  # right exactly as often as it is confident
    assert am.expected_calibration_error(confidence, correct) < 0.005
    assert am.expected_calibration_error(np.full(1000, 0.9), np.zeros(1000)) == pytest.approx(0.9)


def test_brier_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    hand = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.1 ** 2 + 0.9 ** 2 + 0.8 ** 2)) / 2
    assert am.brier(p, np.array([0, 1])) == pytest.approx(hand)


@pytest.mark.parametrize("size", [224, 64, 32])
def test_occlusion_drops_the_same_nested_patches_for_every_model(size):
    """A 14 x 14 grid whatever the size (16 px at 224); level L drops round(196 L) patches, the
    next level's hold them, and the draw depends on the image's row alone."""
    bounds = am.patch_bounds(size)
    assert len(bounds) == 15 and bounds[0] == 0 and bounds[-1] == size
    if size == 224:
        assert (np.diff(bounds) == 16).all()
    rows = np.array([3, 17, 3])
    previous = np.ones((3, size, size), np.float32)
    for level in am.LEVELS[1:]:
        masks = am.occlusion_masks(rows, size, level)
        assert ((previous == 0) & (masks == 1)).sum() == 0  # nested: what was dropped stays dropped
        np.testing.assert_array_equal(masks[0], masks[2])  # the same image, the same patches
        if size == 224:
            assert (masks[0] == 0).sum() == round(level * 196) * 256
        previous = masks
    assert not np.array_equal(am.occlusion_masks(rows[:1], size, 0.4), am.occlusion_masks(rows[1:2], size, 0.4))


def test_occlusion_accuracy_fills_with_the_mean_colour(prepared):
    """On a model that reads the mean of the normalised image, the occluded pixels count as 0 in
    normalised space (the dataset's mean colour); level 0 is the plain accuracy."""
    from proxyattention.data.batches import ArraySource
    from proxyattention.runtime.device import Runtime

    class Brightness(torch.nn.Module):
        def forward(self, x):  # class 1 when the image is brighter than the mean colour, else 0
            m = x.mean((1, 2, 3))
            return torch.stack([-m, m], 1)

    images = np.load(prepared["images"], mmap_mode="r")
    rows = np.arange(40)
    labels = np.ones(40, np.int64)
    accuracies = am.occlusion_accuracies(Brightness(), ArraySource([(images, rows, labels)]), rows, (0.5,) * 3,
                                         (0.5,) * 3, 16, Runtime(torch.device("cpu"), "fp32", False))
    x = (np.asarray(images[rows], np.float32) / 255 - 0.5) / 0.5
    for level, accuracy in zip(am.LEVELS, accuracies):
        masks = am.occlusion_masks(rows, images.shape[1], level)
        expected = ((x * masks[..., None]).mean((1, 2, 3)) > 0).mean()
        assert accuracy == pytest.approx(expected)
    assert am.occlusion_auc([1, 1, 1, 1, 1]) == 1.0
    assert am.occlusion_auc([1.0, 0.8, 0.6, 0.4, 0.2]) == pytest.approx(0.6)


def test_map_spread_by_hand():
    """A map with all its mass on 10% of the pixels: share 1, entropy log(10)/log(100); a flat
    map: share 0.1, entropy 1; an all-zero map is left out."""
    peaked = np.zeros((10, 10))
    peaked[0] = 1.0
    flat = np.full((10, 10), 0.5)
    top, entropy = am.map_spread(np.stack([peaked, flat, np.zeros((10, 10))]))
    assert top == pytest.approx((1.0 + 0.1) / 2)
    assert entropy == pytest.approx((np.log(10) / np.log(100) + 1.0) / 2)


@pytest.mark.parametrize("setting, available, expected", [
    (None, 200, 200), (50, 200, 50), (500, 200, 200), ("10%", 200, 20), ("10%", 10_000, 1000),
    ("0.1%", 200, 1), ("100%", 37, 37), ("10%", 0, 0)])
def test_a_sample_is_a_count_a_share_or_everything(setting, available, expected):
    assert am.sample_size(setting, available) == expected
    assert len(am.sample_rows(np.arange(available) + 7, setting)) == expected


def test_a_sample_setting_outside_the_schema_is_refused():
    from conftest import make_config

    from proxyattention.settings.schema import ConfigError
    from proxyattention.settings.validate import validate

    for bad in ("10", "110%", "-5%", 0):
        with pytest.raises(ConfigError, match="occlusion_sample"):
            validate(make_config(evaluation={"occlusion_sample": bad}))


def test_localisation_by_hand():
    """A 32 px object square: a map inside it, one 2 px outside it (within the 15 px at 224 px
    tolerance: 2 px at 32), one far away, and an empty map."""
    size = 32
    masks = np.zeros((4, size, size), np.uint8)
    masks[:, 8:16, 8:16] = 1
    maps = np.zeros((4, size, size), np.float32)
    maps[0, 10, 10] = 3.0
    maps[0, 20, 20] = 1.0  # a quarter of its mass outside
    maps[1, 17, 12] = 1.0  # its maximum 2 px below the object: a hit within the tolerance
    maps[2, 30, 30] = 1.0  # far from the object
    out = am.localisation(maps, masks)
    assert out["n_localised"] == 4
    assert out["map_in_object"] == pytest.approx((0.75 + 0 + 0) / 3)  # the empty map is left out
    assert out["pointing_game"] == pytest.approx(2 / 4)  # the empty map misses
    assert out["object_share"] == pytest.approx(64 / 1024)
    assert am.localisation(maps[2:3], masks[2:3])["pointing_game"] == 0
    maps[3] = 1.0  # a flat map scores the object's share
    assert am.localisation(maps[3:], masks[3:])["map_in_object"] == pytest.approx(64 / 1024)
    assert np.isnan(am.localisation(maps[:0], masks[:0])["map_in_object"])


def evaluated_and_measured(settings, prepared, trained, folder, name="metrics", masks=None):
    """evaluate, then measure from what it wrote (as the workflow's two rules do): question 2's
    measures."""
    import json

    from proxyattention.stages import evaluate as ev

    metrics, per_image = folder / f"{name}.json", folder / f"{name}_per_image.npz"
    ev.evaluate(settings, prepared["images"], prepared["index"], trained["weights"], trained["meta"],
                trained["stats"], metrics, out_per_image=per_image)
    ev.measure(settings, prepared["images"], prepared["index"], trained["weights"], trained["meta"], metrics,
               per_image, folder / f"{name}_measures.json", masks_path=masks)
    return json.loads((folder / f"{name}_measures.json").read_text())["attention"]


def test_evaluate_plays_the_pointing_game_on_the_images_that_have_masks(prepared, trained, tmp_path):
    """Fashion-MNIST's own objects: a garment is its nonzero pixels. Half the rows without a mask:
    the game is played on the map sample's rows that have one, and the object share is theirs."""
    from proxyattention.analysis.attention_measures import sample_rows
    from proxyattention.files.artifacts import NO_MASK
    from proxyattention.settings.stage_settings import stage_settings

    images = np.load(prepared["images"])
    masks = (images.max(3) > 0).astype(np.uint8)
    masks[1::2] = NO_MASK
    np.save(tmp_path / "masks.npy", masks)
    settings = stage_settings(trained["config"], "fm", "lite0", 0)
    settings["evaluation"].update(occlusion=False, calibration=False, map_sample=40)
    measures = evaluated_and_measured(settings, prepared, trained, tmp_path, masks=tmp_path / "masks.npy")
    index = pd.read_csv(prepared["index"])
    rows = index.loc[index.split == measures["split"], "index"].to_numpy()
    sampled = rows[sample_rows(rows, 40)]
    with_mask = sampled[sampled % 2 == 0]
    assert measures["n_maps"] == 40 and measures["n_localised"] == len(with_mask) > 0
    assert measures["object_share"] == pytest.approx(masks[with_mask].mean())
    assert 0 <= measures["map_in_object"] <= 1 and 0 <= measures["pointing_game"] <= 1
    assert "pointing_game" not in evaluated_and_measured(settings, prepared, trained, tmp_path, "plain")  # no masks


def test_question_two_measured_a_chunk_at_a_time_equals_one_pass(prepared, trained, tmp_path, monkeypatch):
    """#40: the map sample is explained and measured a chunk of whole batches at a time, and the
    occlusion masks made a batch at a time (memory of one chunk, not of the sample); every measure
    equals the one-pass value exactly."""
    from proxyattention.files.artifacts import NO_MASK
    from proxyattention.settings.stage_settings import stage_settings
    from proxyattention.stages import evaluate as ev

    images = np.load(prepared["images"])
    masks = (images.max(3) > 0).astype(np.uint8)
    masks[1::2] = NO_MASK
    np.save(tmp_path / "masks.npy", masks)
    settings = stage_settings(trained["config"], "fm", "lite0", 0)
    settings["model"]["batch_size"] = 16
    settings["evaluation"].update(map_sample=60, occlusion_sample=50)
    measured = {}
    for chunk in (10_000, 20):  # one chunk; then 16 maps (one batch) at a time
        monkeypatch.setattr(ev, "MAP_CHUNK", chunk)
        measured[chunk] = evaluated_and_measured(settings, prepared, trained, tmp_path, str(chunk),
                                                 masks=tmp_path / "masks.npy")
    assert measured[20] == measured[10_000]
    assert measured[20]["n_maps"] == 60 and measured[20]["n_localised"] > 0 and measured[20]["n_occlusion"] == 50


def test_an_evaluation_a_chunk_of_logits_at_a_time_equals_one_over_all_logits(prepared, trained, tmp_path, monkeypatch):
    """#40: evaluate scores a chunk of logits at a time (never N x K logits, nor their float64
    probabilities); its metrics, per-image file and calibration equal those computed from every
    logit at once, value for value."""
    import json

    from proxyattention.analysis.attention_measures import brier_terms, expected_calibration_error
    from proxyattention.data.batches import ArraySource
    from proxyattention.models.build import load_checkpoint
    from proxyattention.models.inference import predict_logits, softmax
    from proxyattention.runtime.device import select_runtime
    from proxyattention.settings.stage_settings import stage_settings
    from proxyattention.stages import evaluate as ev

    settings = stage_settings(trained["config"], "fm", "lite0", 0)
    settings["evaluation"].update(occlusion=False, maps=False)
    monkeypatch.setattr(ev, "EVAL_CHUNK", 60)  # 200 validation images: chunks of 50 (whole batches)
    ev.evaluate(settings, prepared["images"], prepared["index"], trained["weights"], trained["meta"],
                trained["stats"], tmp_path / "metrics.json", out_per_image=tmp_path / "per_image.npz")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    index = pd.read_csv(prepared["index"], keep_default_na=False)
    val = index[index.split == "val"]
    model, info = load_checkpoint(trained["weights"], trained["meta"])
    source = ArraySource([(np.load(prepared["images"], mmap_mode="r"), val["index"].to_numpy(), val["label"].to_numpy())])
    training = settings["training"]  # the evaluation's own runtime
    runtime = select_runtime(training["precision"], training["channels_last"], None, training["deterministic"])
    logits = predict_logits(runtime.prepare_model(model), source, info["mean"], info["std"], 50, runtime)
    labels = val["label"].to_numpy()
    reference = ev.classification_metrics(logits, labels, 10)
    assert {k: metrics[k] for k in reference} == reference
    probs = softmax(logits.astype(np.float64))
    with np.load(tmp_path / "per_image.npz") as saved:
        np.testing.assert_array_equal(saved["val_prediction"], probs.argmax(1))
        np.testing.assert_array_equal(saved["val_p_true"], probs[np.arange(len(labels)), labels].astype(np.float32))
        np.testing.assert_array_equal(saved["val_p_top"], probs.max(1).astype(np.float32))
        np.testing.assert_array_equal(saved["val_brier"], brier_terms(probs, labels).astype(np.float32))
    assert metrics["calibration"]["ece"] == expected_calibration_error(probs.max(1), probs.argmax(1) == labels)
    assert metrics["calibration"]["brier"] == float(brier_terms(probs, labels).mean())
    assert metrics["calibration"]["split"] == "val" and metrics["calibration"]["n_calibration"] == len(labels)


def test_the_measure_stage_equals_measuring_inside_the_evaluation(prepared, trained, tmp_path):
    """#41.1: question 2's measures moved to a stage of their own (so that an evaluation setting
    reruns no cycle). From the evaluation's per-image predictions and calibration they equal, value
    for value, what one process that scores the split itself measures; the evaluation's own
    metrics.json holds no setting of question 2."""
    import json

    from proxyattention.files.artifacts import load_prepared
    from proxyattention.models.build import load_checkpoint
    from proxyattention.runtime.device import select_runtime
    from proxyattention.settings.stage_settings import stage_settings
    from proxyattention.stages import evaluate as ev

    settings = stage_settings(trained["config"], "fm", "lite0", 0)
    settings["evaluation"].update(map_sample=30, occlusion_sample=40)
    measured = evaluated_and_measured(settings, prepared, trained, tmp_path)
    images, index = load_prepared(prepared["images"], prepared["index"])
    model, info = load_checkpoint(trained["weights"], trained["meta"])
    training = settings["training"]
    runtime = select_runtime(training["precision"], training["channels_last"], None, training["deterministic"])
    together = ev.attention(settings, runtime.prepare_model(model), info, images, index, runtime)
    together.pop("seconds")
    assert measured == together and {"ece", "brier", "occlusion_auc", "map_entropy"} <= set(measured)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "attention" not in metrics and set(metrics["calibration"]) == {"split", "ece", "brier", "n_calibration"}
    assert "evaluation" not in stage_settings(trained["config"], "fm", "lite0", 0, "evaluate")
    assert "maps" not in stage_settings(trained["config"], "fm", "lite0", 0, "evaluate")
