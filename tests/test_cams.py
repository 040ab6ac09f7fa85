"""CAM methods against pytorch-grad-cam, the fast path's exactness, and ViTs end to end."""

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from proxyattention.models.cams import (
    CamError,
    GapLinearCAM,
    auto_target_layer,
    build_cam,
    compute_maps,
    fast_path_applies,
)
from proxyattention.models.cams import CAM_METHODS


def model_and_input(name, size=64, batch=3, seed=0):
    torch.manual_seed(seed)
    kwargs = {"img_size": size} if name.startswith("vit") else {}
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    return model, torch.randn(batch, 3, size, size)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "regnetx_002", "densenet121"])
def test_fast_path_equals_library_gradcam(name):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = model_and_input(name)
    layer = auto_target_layer(model, 64)
    assert fast_path_applies(model, "gradcam", layer, 64)
    classes = [0, 3, 4]
    with pgc.GradCAM(model=model, target_layers=[dict(model.named_modules())[layer]]) as cam:
        reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    fast = compute_maps(GapLinearCAM(model), model, x, classes)
    assert fast.shape == reference.shape == (3, 64, 64)
    np.testing.assert_allclose(fast, reference, atol=1e-5)
    assert reference.max() > 0.99  # the comparison is not between two empty maps


@pytest.mark.parametrize("name", ["convnext_atto", "mobilenetv3_small_050", "vit_tiny_patch16_224"])
def test_fast_path_refused_where_not_exact(name):
    model, _ = model_and_input(name)
    layer = auto_target_layer(model, 64)
    assert not fast_path_applies(model, "gradcam", layer, 64)
    assert not isinstance(build_cam(model, "gradcam", layer, 64), GapLinearCAM)


def test_fast_path_only_for_gradcam_at_the_last_feature_map():
    model, _ = model_and_input("resnet18")
    assert not fast_path_applies(model, "gradcam++", "layer4", 64)
    assert not fast_path_applies(model, "gradcam", "layer3", 64)
    assert auto_target_layer(model, 64) == "layer4"


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_every_method_runs_on_a_cnn(method):
    model, x = model_and_input("resnet18", size=32, batch=2)
    with build_cam(model, method, "layer4", 32, fast_path=False, batch_size=16) as cam:
        maps = compute_maps(cam, model, x, [1, 2])
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6


@pytest.mark.parametrize("method", sorted(set(CAM_METHODS) - {"fullgrad", "cam"}))
def test_every_method_runs_on_a_vit(method):
    """The token reshape makes every method work on a ViT (the thesis code lost these silently)."""
    model, x = model_and_input("vit_tiny_patch16_224", size=32, batch=2)
    layer = auto_target_layer(model, 32)
    assert layer == "blocks.11.norm1"
    with build_cam(model, method, layer, 32, batch_size=16) as cam:
        maps = compute_maps(cam, model, x, [1, 2])
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()


def test_cam_is_refused_on_a_vit_by_name():
    model, _ = model_and_input("vit_tiny_patch16_224", size=32, batch=2)
    with pytest.raises(CamError, match="no global-average-pool \\+ linear head"):
        build_cam(model, "cam", "blocks.11.norm1", 32)


def test_vit_gradcam_maps_follow_the_patch_grid():
    """Grad-CAM of the predicted class on a ViT is a real map on the 4x4 patch grid, not empty."""
    model, x = model_and_input("vit_tiny_patch16_224", size=64, batch=2)
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    with build_cam(model, "gradcam", auto_target_layer(model, 64), 64) as cam:
        maps = compute_maps(cam, model, x, predicted)
    assert (maps.reshape(2, -1).max(1) > 0.99).all(), "a ViT map came back empty"
    assert (maps.reshape(2, -1).std(1) > 0.05).all()


def test_vit_with_register_tokens_drops_them():
    model = timm.create_model("vit_little_patch16_reg4_gap_256", img_size=32, num_classes=3).eval()
    assert model.num_prefix_tokens == 4  # four register tokens, no class token
    with build_cam(model, "gradcam", auto_target_layer(model, 32), 32) as cam:
        maps = compute_maps(cam, model, torch.randn(1, 3, 32, 32), [0])
    assert maps.shape == (1, 32, 32)


def test_a_failing_cam_stops_with_a_clear_error():
    model, x = model_and_input("vit_tiny_patch16_224", size=32, batch=1)
    # A layer whose output is not a token sequence: the reshape must refuse, not skip.
    with build_cam(model, "gradcam", "head", 32) as cam:
        with pytest.raises(CamError, match="ViT tokens"):
            compute_maps(cam, model, x, [0])
    with pytest.raises(CamError, match="not a module"):
        build_cam(model, "gradcam", "blocks.99", 32)


def test_fast_path_not_used_when_auto_picks_an_earlier_layer():
    """At 32 px resnet18's final map is 1x1, so auto picks layer3, where Grad-CAM is not the CAM."""
    model, x = model_and_input("resnet18", size=32)
    layer = auto_target_layer(model, 32)
    assert layer == "layer3"
    assert not fast_path_applies(model, "gradcam", layer, 32)


def stage_settings_for(trained, **proxy):
    from proxyattention.settings.stage_settings import stage_settings

    config = trained["config"]
    config = {**config, "proxy": {**config["proxy"], **proxy}}
    return stage_settings(config, "fm", "lite0", 1, "compute_cams")


def selected_table(prepared, tmp_path, n=40):
    import pandas as pd

    index = pd.read_csv(prepared["index"], keep_default_na=False)
    train = index[index.split == "train"].head(n)
    table = pd.DataFrame({"index": train["index"], "label": train["label"], "prediction": (train["label"] + 1) % 10})
    table.to_csv(tmp_path / "selected.csv", index=False)
    return table


def run_compute_cams(settings, prepared, trained, tmp_path):
    import pandas as pd

    from proxyattention.stages.compute_cams import compute_cams

    compute_cams(settings, prepared["images"], prepared["index"], trained["weights"], trained["meta"],
                 tmp_path / "selected.csv", tmp_path / "cams.npz", tmp_path / "cams.csv")
    return pd.read_csv(tmp_path / "cams.csv", keep_default_na=False), np.load(tmp_path / "cams.npz")


def test_empty_maps_of_the_label_are_explained_again_for_the_prediction(prepared, trained, tmp_path):
    """At 32 px the explained layer is tiny and many label maps are empty; explain_prediction
    recomputes exactly those for the predicted class and says so."""
    from proxyattention.files.artifacts import empty_maps

    selected = selected_table(prepared, tmp_path)
    first, first_npz = run_compute_cams(stage_settings_for(trained), prepared, trained, tmp_path)
    assert first["empty"].any(), "the test needs some empty maps"
    assert list(first["empty"]) == list(empty_maps(first_npz["maps"].astype(np.float32)))
    assert (first["explains"] == "label").all()
    again, again_npz = run_compute_cams(stage_settings_for(trained, empty_maps="explain_prediction"), prepared,
                                        trained, tmp_path)
    redone = again["explains"] == "prediction"
    # exactly the empty ones under the threshold (constant maps and top plateaus over the quantile),
    # all of them wrong predictions here
    from proxyattention.data.erasing import empty_masks

    threshold = trained["config"]["proxy"]["threshold"]
    assert list(redone) == list(empty_masks(first_npz["maps"].astype(np.float32), threshold))
    assert redone.sum() >= first["empty"].sum()
    np.testing.assert_array_equal(again.loc[redone, "target"], selected.loc[redone.to_numpy(), "prediction"])
    np.testing.assert_array_equal(again_npz["maps"][~redone.to_numpy()], first_npz["maps"][~redone.to_numpy()])
    assert again["empty"].sum() <= first["empty"].sum()


def test_an_error_while_loading_images_is_not_swallowed(prepared, trained, tmp_path, monkeypatch):
    """pytorch-grad-cam's __exit__ prints and swallows an IndexError raised inside `with cam:`;
    the stage loads images outside it, so the error stops the stage instead of leaving zero maps."""
    from proxyattention.data import batches as data

    selected_table(prepared, tmp_path, n=120)
    real = data.ArraySource.gather
    calls = []

    def failing(self, indices):
        calls.append(1)
        if len(calls) == 2:
            raise IndexError("simulated failure while loading the second batch")
        return real(self, indices)

    monkeypatch.setattr(data.ArraySource, "gather", failing)
    with pytest.raises(IndexError, match="second batch"):
        run_compute_cams(stage_settings_for(trained, cam_method="gradcam++"), prepared, trained, tmp_path)
    assert not (tmp_path / "cams.npz").exists()


def test_a_library_cam_keeps_nothing_of_the_last_batch():
    """#27.15: pytorch-grad-cam keeps the last batch's outputs (with the graph retain_graph=True
    kept), activations and gradients, so the next batch ran with two batches in memory."""
    import timm

    from proxyattention.models.cams import build_cam, compute_maps

    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    cam = build_cam(model, "gradcam++", "layer4", 64, fast_path=False)
    maps = compute_maps(cam, model, torch.randn(2, 3, 64, 64), [0, 2])
    assert maps.shape == (2, 64, 64)
    assert cam.outputs is None
    assert cam.activations_and_grads.activations == [] and cam.activations_and_grads.gradients == []
    assert all(p.grad is None for p in model.parameters())


def test_running_out_of_gpu_memory_in_a_cam_says_what_to_lower():
    from proxyattention.models.cams import CamError, compute_maps

    class Exhausted:
        def __call__(self, input_tensor, targets):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(CamError, match=r"out of memory .* batch of 2 images at \(64, 64\) px; lower models\.<name>\.batch_size"):
        compute_maps(Exhausted(), torch.nn.Linear(1, 1), torch.zeros(2, 3, 64, 64), [0, 1])


def test_running_out_of_gpu_memory_predicting_says_what_to_lower():
    """The validation and prediction passes say the same as training and the CAM stage."""
    from proxyattention.data.batches import ArraySource
    from proxyattention.models.inference import predict_logits
    from proxyattention.runtime.device import Runtime

    class Exhausted(torch.nn.Module):
        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    images = np.zeros((4, 8, 8, 3), np.uint8)
    source = ArraySource([(images, np.arange(4), np.zeros(4, np.int64))])
    with pytest.raises(RuntimeError, match=r"batches of 2 images; lower models\.<name>\.batch_size"):
        predict_logits(Exhausted(), source, (0.5,) * 3, (0.5,) * 3, 2, Runtime(torch.device("cpu"), "fp32", False))


@pytest.mark.parametrize("empty", ["skip", "explain_prediction"])
def test_cams_made_and_written_a_chunk_at_a_time_are_the_whole_passes_bytes(prepared, trained, tmp_path, monkeypatch,
                                                                           empty):
    """#40: compute_cams streams its maps a chunk of whole batches at a time (memory: one chunk, not
    every map); the file and table are those of one chunk holding every map, byte for byte."""
    from proxyattention.stages import compute_cams as cc

    selected_table(prepared, tmp_path, n=120)
    settings = stage_settings_for(trained, empty_maps=empty)
    settings["model"]["batch_size"] = 16
    files = {}
    for chunk in (10_000, 40):  # one chunk; then 40 -> 32 rows, two whole batches: four chunks
        monkeypatch.setattr(cc, "CAM_CHUNK", chunk)
        table, npz = run_compute_cams(settings, prepared, trained, tmp_path)
        files[chunk] = ((tmp_path / "cams.npz").read_bytes(), table.drop(columns="seconds_total"),
                        {k: npz[k] for k in npz.files})
    pd.testing.assert_frame_equal(files[40][1], files[10_000][1])
    if empty == "skip":
        assert files[40][0] == files[10_000][0]
    else:  # the maps explained again are batched within their chunk, so other images share their batch
        assert (files[40][1].explains == "prediction").any()  # the redo ran, inside the chunks
        for key in ("index", "target"):
            np.testing.assert_array_equal(files[40][2][key], files[10_000][2][key])
        diff = np.abs(files[40][2]["maps"].astype(np.float32) - files[10_000][2]["maps"].astype(np.float32))
        assert diff.max() <= 1e-3  # float16 rounding of the same map (2.4e-4 here)


def test_predictions_made_a_chunk_at_a_time_are_the_whole_passes_table(prepared, trained, monkeypatch):
    """#40: find_misclassified reduces the logits a chunk at a time (never all N x K of them); its
    table equals prediction_table of every logit at once, value for value."""
    import pandas as pd

    from proxyattention.data.batches import ArraySource
    from proxyattention.models.build import load_checkpoint
    from proxyattention.models.inference import predict_logits
    from proxyattention.runtime.device import select_runtime
    from proxyattention.stages import find_misclassified as fm

    index = pd.read_csv(prepared["index"], keep_default_na=False)
    train = index[index.split == "train"].reset_index(drop=True)
    images = np.load(prepared["images"], mmap_mode="r")
    model, info = load_checkpoint(trained["weights"], trained["meta"])
    runtime = select_runtime("fp32", False, "cpu")
    source = ArraySource([(images, train["index"].to_numpy(), train["label"].to_numpy())])
    whole = fm.prediction_table(predict_logits(model, source, info["mean"], info["std"], 50, runtime), train)
    monkeypatch.setattr(fm, "PREDICT_CHUNK", 120)  # 500 images: chunks of 100, 100, ..., whole batches of 50
    chunked = fm.predicted_table(model, source, train, info, 50, runtime)
    pd.testing.assert_frame_equal(chunked, whole, check_exact=True)
