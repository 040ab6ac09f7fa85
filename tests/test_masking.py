"""Thresholds, fills and the random control, counted to the pixel."""

import cv2
import numpy as np
import pandas as pd
import pytest

from proxyattention.masking import erase, mask_and_save, random_masks, threshold_masks

SETTINGS = {"proxy": {"threshold": {"mode": "quantile", "value": 0.9}, "fill": {"mode": "black", "blend_lambda": 0.4},
                      "random_erase": {"shape": "rectangle"}}}


def ramp_maps(n=3, size=20):
    """Maps with all-distinct values: a permuted ramp per image."""
    rng = np.random.default_rng(0)
    return np.stack([rng.permutation(size * size).reshape(size, size) / (size * size - 1) for _ in range(n)]).astype(np.float32)


def test_quantile_keeps_the_top_ten_percent():
    masks, thresholds = threshold_masks(ramp_maps(), "quantile", 0.9)
    assert (masks.reshape(3, -1).sum(1) == 40).all()  # 10% of 400 distinct values
    assert thresholds.shape == (3,)


def test_value_mode_counts_pixels_above_the_value():
    maps = ramp_maps()
    masks, _ = threshold_masks(maps, "value", 0.5)
    np.testing.assert_array_equal(masks.reshape(3, -1).sum(1), (maps > 0.5).reshape(3, -1).sum(1))


def test_topk_area_is_exact_even_with_ties():
    maps = np.zeros((2, 10, 10), np.float32)
    maps[0, :5] = 1.0  # 50 tied maxima
    masks, _ = threshold_masks(maps, "topk_area", 0.9)
    assert (masks.reshape(2, -1).sum(1) == 10).all()
    assert masks[0, :5].sum() == 10  # taken from the highest values
    quantile_masks, _ = threshold_masks(maps, "quantile", 0.9)
    assert quantile_masks[0].sum() == 0 and quantile_masks[1].sum() == 0  # ties: nothing strictly above


def test_black_pixels_exactly_where_the_mask_is():
    from skimage import data

    image = cv2.resize(data.astronaut(), (20, 20))
    image = np.maximum(image, 1)  # no black pixel before erasing
    images = np.stack([image] * 3)
    maps = ramp_maps()
    masks, _ = threshold_masks(maps, "quantile", 0.9)
    out = erase(images, maps, masks, {"mode": "black"}, np.random.default_rng(0))
    black = (out == 0).all(-1)
    np.testing.assert_array_equal(black, masks)
    np.testing.assert_array_equal(out[~masks], images[~masks])


@pytest.mark.parametrize("mode", ["mean", "blur", "noise"])
def test_other_fills_change_only_masked_pixels(mode):
    from skimage import data

    images = np.stack([cv2.resize(data.astronaut(), (20, 20))] * 3)
    maps = ramp_maps()
    masks, _ = threshold_masks(maps, "quantile", 0.8)
    out = erase(images, maps, masks, {"mode": mode}, np.random.default_rng(0))
    np.testing.assert_array_equal(out[~masks], images[~masks])
    assert (out[masks] != images[masks]).any()


def test_blend_dims_by_the_map():
    images = np.full((3, 20, 20, 3), 200, np.uint8)
    maps = ramp_maps()
    masks, _ = threshold_masks(maps, "value", 0.85)
    out = erase(images, maps, masks, {"mode": "blend", "blend_lambda": 0.4}, np.random.default_rng(0))
    expected = np.where(maps > 0.85, np.rint((1 - 0.4 * maps) * 200), 200)
    np.testing.assert_array_equal(out[..., 0], expected.astype(np.uint8))


@pytest.mark.parametrize("shape", ["rectangle", "cam_shape"])
def test_random_control_erases_the_same_area_elsewhere(shape):
    maps = ramp_maps(n=8, size=16)
    masks, _ = threshold_masks(maps, "quantile", 0.8)
    moved = random_masks(masks, shape, np.random.default_rng(1))
    np.testing.assert_array_equal(moved.reshape(8, -1).sum(1), masks.reshape(8, -1).sum(1))
    assert (moved != masks).any()


def test_stage_writes_pngs_that_decode_to_the_arrays(prepared, tmp_path):
    images = np.load(prepared["images"])
    rows = np.array([3, 10, 42])
    maps = ramp_maps(n=3, size=images.shape[1])
    np.savez(tmp_path / "cams.npz", maps=maps.astype(np.float16), index=rows, target=np.zeros(3, np.int64))
    mask_and_save(SETTINGS, prepared["images"], prepared["index"], prepared["classes"], tmp_path / "cams.npz",
                  tmp_path / "erased", tmp_path / "erased.npz", tmp_path / "erased.csv")
    table = pd.read_csv(tmp_path / "erased.csv")
    saved = np.load(tmp_path / "erased.npz")
    assert list(table["index"]) == list(rows)
    for i, row in table.iterrows():
        png = cv2.cvtColor(cv2.imread(row.png), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(png, saved["images"][i])
        mask, _ = threshold_masks(maps[i : i + 1].astype(np.float16).astype(np.float32), "quantile", 0.9)
        assert row.erased_fraction == pytest.approx(mask.mean())
        np.testing.assert_array_equal(saved["images"][i][~mask[0]], images[rows[i]][~mask[0]])
    assert len(list((tmp_path / "erased").rglob("*.png"))) == 3


def test_stage_with_nothing_selected_writes_empty_outputs(prepared, tmp_path):
    size = np.load(prepared["images"], mmap_mode="r").shape[1]
    np.savez(tmp_path / "cams.npz", maps=np.zeros((0, size, size), np.float16), index=np.zeros(0, np.int64),
             target=np.zeros(0, np.int64))
    mask_and_save(SETTINGS, prepared["images"], prepared["index"], prepared["classes"], tmp_path / "cams.npz",
                  tmp_path / "erased", tmp_path / "erased.npz", tmp_path / "erased.csv", control="random")
    assert len(pd.read_csv(tmp_path / "erased.csv")) == 0
    assert np.load(tmp_path / "erased.npz")["images"].shape == (0, size, size, 3)
