"""A model entry that would fail a job is refused before any job: a misspelled timm name (with
the closest names), a pretrained tag timm lacks, a target layer that is not a module or not a
map, hub weights neither cached nor reachable. Channels-last stages (Swin) are read in their
layout, checked against Grad-CAM computed by hand."""

import os

import numpy as np
import pytest
import timm
import torch
from conftest import DEMO, make_config, snakemake, tiny_config

from proxyattention.models.cams import (
    auto_target_layer,
    build_cam,
    channels_last_maps,
    compute_maps,
    explained_grid,
)
from proxyattention.settings.model_checks import (
    ModelCheckError,
    check_models,
    hub_problem,
    layer_problem,
    timm_name_problem,
)
from proxyattention.settings.schema import ConfigError
from proxyattention.settings.validate import check_config


def test_a_misspelled_name_is_answered_with_the_closest_names():
    problem = timm_name_problem("models.m.timm_name", "efficientnet_lite00")
    assert problem.startswith("models.m.timm_name: timm has no model 'efficientnet_lite00'")
    assert "closest names: efficientnet_lite0," in problem


def test_pretrained_tags_are_accepted_and_a_wrong_tag_lists_the_real_ones():
    assert timm_name_problem("k", "resnet50.a1_in1k") is None and timm_name_problem("k", "resnet50") is None
    problem = timm_name_problem("k", "resnet50.zz_in1k")
    assert "no pretrained tag 'zz_in1k' for resnet50" in problem and "resnet50.a1_in1k" in problem
    check_config(make_config(models={"lite0": {"timm_name": "tf_efficientnet_lite0.in1k", "weights": "none"}}))
    with pytest.raises(ConfigError, match="closest names: efficientnet_lite0"):
        check_config(make_config(models={"lite0": {"timm_name": "efficientnet_lite00", "weights": "none"}}))


def test_a_target_layer_is_checked_before_any_job():
    model = timm.create_model("tf_efficientnet_lite0", num_classes=2)
    assert layer_problem("k", model, "blocks.4", 64) is None
    assert "closest module names: blocks.4, " in layer_problem("k", model, "blocks.44", 64)
    assert "no 4D feature map" in layer_problem("k", model, "classifier", 64)
    def lite0(layer):
        return make_config(models={"lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "bundled",
                                             "target_layer": layer}},
                           datasets={"fm": {"source": "idx", "path": "x", "image_size": 64}})

    with pytest.raises(ModelCheckError, match=r"models.lite0.target_layer: 'block.4' is not a module .* blocks.4"):
        check_models(lite0("block.4"))
    assert check_models(lite0("blocks.4")) == []
    assert "2x2 map (layer bn2)" in check_models(lite0("auto"))[0]


def test_channels_last_stages_give_the_grad_cam_computed_by_hand():
    """Swin's stages output (B, H, W, C). Its Grad-CAM must weight channels by their mean gradient
    over H and W of that layout; reading it as (B, C, H, W) would mix rows and channels."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=3, img_size=64, window_size=4).eval()
    assert channels_last_maps(model)
    layer = "layers.2"
    assert auto_target_layer(model, 64) == "norm" and explained_grid(model, layer, 64) == (4, 4)
    x = torch.randn(2, 3, 64, 64)
    maps = compute_maps(build_cam(model, "gradcam", layer, 64), model, x, [0, 2])

    store = {}
    handle = model.layers[2].register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = model(x)
    handle.remove()
    grads = torch.autograd.grad(logits[0, 0] + logits[1, 2], store["a"])[0]  # (B, H, W, C)
    weights = grads.mean(dim=(1, 2), keepdim=True)
    cam = torch.relu((weights * store["a"]).sum(dim=3)).detach().numpy()
    want = scale_cam_image(scale_cam_image(cam, (64, 64)))  # as the library: per layer, then over layers
    np.testing.assert_allclose(maps, want, atol=1e-5)


def empty_hub_caches(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))


def test_hub_weights_neither_cached_nor_reachable_are_refused_with_their_cause(monkeypatch, tmp_path):
    empty_hub_caches(monkeypatch, tmp_path)
    problem = hub_problem("models.r.weights", "resnet18")
    assert problem.startswith("models.r.weights: hub needs timm's pretrained weights for resnet18 (timm/resnet18")
    assert "not in the local cache" in problem and "Error" in problem  # the cause, e.g. ConnectError: ...
    # A file in the Hugging Face cache where timm looks for it: loadable, nothing to fetch.
    snapshot = tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    (tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc")
    assert hub_problem("models.r.weights", "resnet18") is None
    assert "no pretrained weights" in hub_problem("k", "resnet18.nope")


def test_a_run_with_unreachable_hub_weights_stops_before_any_job(tmp_path):
    """Not 47 s of retries in a finetune: the run stops at its start, naming the key, and no job ran."""
    tiny_config(tmp_path, models={"r18": {"timm_name": "resnet18", "weights": "hub", "batch_size": 100}})
    env_keys = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"}
    old = {k: os.environ.get(k) for k in env_keys}
    os.environ.update(env_keys)
    try:
        proc = snakemake(tmp_path, "--cores", "1", check=False)
        dry = snakemake(tmp_path, "--cores", "1", "-n", check=False)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert proc.returncode != 0
    assert "models.r18.weights: hub needs timm's pretrained weights for resnet18" in proc.stderr + proc.stdout
    assert "HF_HUB_OFFLINE is set" in proc.stderr + proc.stdout
    assert not (tmp_path / "results" / "logs").exists() and not (tmp_path / "results" / "prepared").exists()
    assert dry.returncode == 0  # a dry run loads nothing: it plans


def test_a_tiny_map_s_warning_names_the_layers_that_would_serve():
    """A 2x2 map at the dataset's size: the warning names the earlier layers with usable maps and
    their sizes (from a blank forward, no trained model), nearest first, and the pilot's command."""
    config = make_config(models={"lite0": {"timm_name": "tf_efficientnet_lite0", "weights": "bundled",
                                           "batch_size": 50, "target_layer": "blocks.6"}},
                         datasets={"fm": {"source": "idx", "path": str(DEMO), "image_size": 64}})
    (message,) = [m for m in check_models(config) if "2x2 map" in m]
    assert "earlier layer: blocks.4 (4x4), blocks.2 (8x8), blocks.1 (16x16), blocks.0 (32x32)" in message
    assert "python -m proxyattention.stages.layer_pilot --dataset fm --model lite0" in message
