"""Thresholds, fills and the random control, counted to the pixel."""

import cv2
import numpy as np
import pandas as pd
import pytest

from proxyattention.data.erasing import erase, random_masks, threshold_masks
from proxyattention.stages.mask_and_save import mask_and_save

SETTINGS = {"proxy": {"threshold": {"mode": "quantile", "value": 0.9}, "fill": {"mode": "black", "blend_lambda": 0.4},
                      "random_erase": {"shape": "rectangle"}, "empty_maps": "skip"}}


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
    maps[1, 3, 3] = 0.5  # one maximum, 99 tied zeros after it
    masks, _ = threshold_masks(maps, "topk_area", 0.9)
    assert (masks.reshape(2, -1).sum(1) == 10).all()
    assert masks[0, :5].sum() == 10  # taken from the highest values
    assert masks[1, 3, 3]
    quantile_masks, _ = threshold_masks(maps, "quantile", 0.9)
    assert quantile_masks[0].sum() == 0  # ties: nothing strictly above
    assert quantile_masks[1].sum() == 1


@pytest.mark.parametrize("mode, value", [("topk_area", 0.9), ("quantile", 0.9), ("value", 0.5), ("topk_area", 0.01)])
@pytest.mark.parametrize("level", [0.0, 0.7, 1.0])
def test_a_constant_map_erases_nothing(mode, value, level):
    """An all-zero (or any constant) map ranks no pixel above another: no erasure in any mode,
    not the first pixels in memory order."""
    maps = np.full((2, 12, 12), level, np.float32)
    masks, _ = threshold_masks(maps, mode, value)
    assert masks.sum() == 0


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
    # #40: each PNG's size recorded, so aggregate adds them instead of walking the folder: the same total
    from proxyattention.stages.aggregate import _folder_mib

    pngs = sorted((tmp_path / "erased").rglob("*.png"))
    assert sorted(table.png_bytes) == sorted(f.stat().st_size for f in pngs)
    walked = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) / 2**20
    assert _folder_mib(tmp_path) == pytest.approx(walked, abs=1e-12)
    table.assign(png_bytes=table.png_bytes + 2**20).to_csv(tmp_path / "erased.csv", index=False)
    grown = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) / 2**20 - walked
    assert _folder_mib(tmp_path) == pytest.approx(walked + grown + 3, abs=1e-9)  # the recorded sizes, not a walk


def test_stage_with_nothing_selected_writes_empty_outputs(prepared, tmp_path):
    size = np.load(prepared["images"], mmap_mode="r").shape[1]
    np.savez(tmp_path / "cams.npz", maps=np.zeros((0, size, size), np.float16), index=np.zeros(0, np.int64),
             target=np.zeros(0, np.int64))
    mask_and_save(SETTINGS, prepared["images"], prepared["index"], prepared["classes"], tmp_path / "cams.npz",
                  tmp_path / "erased", tmp_path / "erased.npz", tmp_path / "erased.csv", control="random")
    assert len(pd.read_csv(tmp_path / "erased.csv")) == 0
    assert np.load(tmp_path / "erased.npz")["images"].shape == (0, size, size, 3)


def run_stage(prepared, tmp_path, maps, rows, empty_maps="skip", control=None):
    np.savez(tmp_path / "cams.npz", maps=maps.astype(np.float16), index=rows, target=np.zeros(len(rows), np.int64))
    settings = {"proxy": {**SETTINGS["proxy"], "empty_maps": empty_maps}}
    mask_and_save(settings, prepared["images"], prepared["index"], prepared["classes"], tmp_path / "cams.npz",
                  tmp_path / "erased", tmp_path / "erased.npz", tmp_path / "erased.csv", control=control, seed=3)
    return pd.read_csv(tmp_path / "erased.csv", keep_default_na=False), np.load(tmp_path / "erased.npz")


def hand_made_maps(size):
    """Four maps: a ramp, all zeros (Grad-CAM negative everywhere), a ramp, a constant 0.5."""
    maps = ramp_maps(n=4, size=size)
    maps[1] = 0.0
    maps[3] = 0.5
    return maps


@pytest.mark.parametrize("control", [None, "random", "duplicate"])
def test_empty_maps_are_left_out_by_default(prepared, tmp_path, control):
    """No arm adds an unchanged copy of an image whose map was empty; the table counts them."""
    size = np.load(prepared["images"], mmap_mode="r").shape[1]
    rows = np.array([3, 10, 42, 77])
    table, saved = run_stage(prepared, tmp_path, hand_made_maps(size), rows, control=control)
    assert list(table["index"]) == list(rows)  # one row per selected image
    assert list(table["empty_map"]) == [False, True, False, True]
    assert list(table["added"]) == [False if e else True for e in table["empty_map"]]
    assert list(saved["index"]) == [3, 42] and len(saved["images"]) == 2
    assert len(list((tmp_path / "erased").rglob("*.png"))) == 2
    assert (table.loc[table.empty_map, "png"] == "").all()
    erased = table.loc[table.added, "erased_fraction"]
    if control == "duplicate":
        assert (erased == 0).all()
    else:  # the top 10% of distinct values, at the map's place or elsewhere
        np.testing.assert_allclose(erased, (size * size - int(np.ceil(0.9 * (size * size - 1)))) / size**2, atol=2 / size**2)


def test_duplicate_control_adds_the_same_images_unchanged(prepared, tmp_path):
    images = np.load(prepared["images"])
    size = images.shape[1]
    rows = np.array([3, 10, 42, 77])
    _, saved = run_stage(prepared, tmp_path, hand_made_maps(size), rows, control="duplicate")
    np.testing.assert_array_equal(saved["images"], images[[3, 42]])
    proxy_dir = tmp_path / "proxy"
    proxy_dir.mkdir()
    _, proxied = run_stage(prepared, proxy_dir, hand_made_maps(size), rows)
    np.testing.assert_array_equal(saved["index"], proxied["index"])  # same images as the erasing arm adds
    assert (saved["images"] != proxied["images"]).any()


def test_keep_adds_empty_maps_unchanged_and_says_so(prepared, tmp_path):
    images = np.load(prepared["images"])
    rows = np.array([3, 10, 42, 77])
    table, saved = run_stage(prepared, tmp_path, hand_made_maps(images.shape[1]), rows, empty_maps="keep")
    assert table["added"].all() and len(saved["images"]) == 4
    assert list(table["erased_fraction"] == 0) == [False, True, False, True]
    np.testing.assert_array_equal(saved["images"][1], images[10])
    from proxyattention.stages.aggregate import added_counts

    counts = added_counts(tmp_path / "erased.csv")
    assert counts == {"n_selected": 4, "n_empty_maps": 2, "empty_map_fraction": 0.5, "n_added": 4, "n_erased": 2,
                      "n_added_unchanged": 2, "erased_fraction_mean": pytest.approx(table.erased_fraction[[0, 2]].mean()),
                      "changed_fraction_mean": pytest.approx(table.changed_fraction.mean())}


def tiny_prepared(tmp_path, images):
    """A prepared dataset of the given uint8 images (N, S, S, 3), every one a training image of class 0."""
    np.save(tmp_path / "images.npy", images)
    pd.DataFrame({"index": range(len(images)), "source": [f"x{i}" for i in range(len(images))],
                  "label": 0, "class": "a", "split": "train", "sha1": [f"h{i}" for i in range(len(images))]}
                 ).to_csv(tmp_path / "index.csv", index=False)
    (tmp_path / "classes.json").write_text('{"classes": ["a", "b"], "image_size": %d}' % images.shape[1])
    return {"images": tmp_path / "images.npy", "index": tmp_path / "index.csv", "classes": tmp_path / "classes.json"}


def test_black_fill_on_black_changes_nothing_and_is_not_counted_as_erased(tmp_path):
    """#22.3: n_erased counts images with a changed pixel, not images with a mask: a black
    fill over a black image changes none, so it is an unchanged copy."""
    from proxyattention.stages.aggregate import added_counts

    size = 16
    images = np.zeros((2, size, size, 3), np.uint8)
    images[1, :, : size // 2] = 200  # left half bright, right half black
    prepared = tiny_prepared(tmp_path, images)
    rising = np.arange(size)[None, :] + np.arange(size)[:, None] / size  # left to right, all values distinct
    maps = np.stack([rising, rising[:, ::-1]]).astype(np.float32) / size  # tops: right (black), left (bright)
    table, _ = run_stage(prepared, tmp_path, maps, np.array([0, 1]))
    assert table["added"].tolist() == [True, True]
    assert table["erased_fraction"].gt(0).all()  # both masks hold pixels
    assert table["changed_fraction"].tolist()[0] == 0.0
    assert table["changed_fraction"].tolist()[1] == pytest.approx(table["erased_fraction"].tolist()[1])
    counts = added_counts(tmp_path / "erased.csv")
    assert (counts["n_erased"], counts["n_added_unchanged"]) == (1, 1)
    assert counts["changed_fraction_mean"] == pytest.approx(table["changed_fraction"].mean())


@pytest.mark.parametrize("control", [None, "random", "duplicate"])
def test_a_plateau_that_covers_the_quantile_is_an_empty_map(tmp_path, control):
    """#22.4: a 2x2 map upsampled to 64 px has a top plateau of a quarter of the pixels; with
    q = 0.95 nothing lies strictly above the quantile, so the mask is empty: under
    empty_maps: skip it is not added (by any arm), like a constant map."""
    size = 64
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, (2, size, size, 3), dtype=np.uint8)
    prepared = tiny_prepared(tmp_path, images)
    plateau = np.kron(np.array([[0.0, 0.2], [0.5, 1.0]]), np.ones((32, 32)))
    maps = np.stack([plateau, ramp_maps(n=1, size=size)[0]]).astype(np.float32)
    np.savez(tmp_path / "cams.npz", maps=maps.astype(np.float16), index=np.array([0, 1]),
             target=np.zeros(2, np.int64))
    settings = {"proxy": {**SETTINGS["proxy"], "threshold": {"mode": "quantile", "value": 0.95}}}
    mask_and_save(settings, prepared["images"], prepared["index"], prepared["classes"], tmp_path / "cams.npz",
                  tmp_path / "erased", tmp_path / "erased.npz", tmp_path / "erased.csv", control=control)
    table = pd.read_csv(tmp_path / "erased.csv", keep_default_na=False)
    assert table["empty_map"].tolist() == [True, False]
    assert table["added"].tolist() == [False, True]
    assert np.load(tmp_path / "erased.npz")["index"].tolist() == [1]


def test_memory_stays_flat_as_the_selection_grows(tmp_path):
    """#27.3: mask_and_save held every selected image and its float32 map at once, and a retrain
    loaded every earlier erased.npz whole. Both now read and write a batch at a time (the maps and
    the added images memory-mapped from their .npz): the peak of the arrays this process allocates
    (tracemalloc counts numpy's) on a selection 10x larger stays within 1.5x, and the output is
    the same bytes np.savez writes."""
    import json
    import tracemalloc

    from proxyattention.data.splits import training_source

    rng = np.random.default_rng(0)
    n, size = 3000, 64
    np.save(tmp_path / "images.npy", rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))
    index = pd.DataFrame({"index": np.arange(n), "source": [f"s{i}" for i in range(n)], "label": np.arange(n) % 10,
                          "split": "train"})
    index.to_csv(tmp_path / "index.csv", index=False)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": [str(c) for c in range(10)]}))
    settings = {"proxy": {**SETTINGS["proxy"], "fill": {"mode": "mean", "blend_lambda": 0.4}}}

    def peak(selected: int) -> tuple[int, int]:
        folder = tmp_path / f"sel{selected}"
        folder.mkdir()
        rows = rng.choice(n, selected, replace=False)
        np.savez(folder / "cams.npz", maps=rng.random((selected, size, size)).astype(np.float16), index=rows,
                 target=index.label.to_numpy()[rows])
        tracemalloc.start()
        mask_and_save(settings, tmp_path / "images.npy", tmp_path / "index.csv", tmp_path / "classes.json",
                      folder / "cams.npz", folder / "pngs", folder / "erased.npz", folder / "erased.csv", seed=0)
        masking_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        source, n_extra = training_source(np.load(tmp_path / "images.npy", mmap_mode="r"), index, [folder / "erased.npz"])
        source.gather(np.arange(len(source))[-50:])
        loading_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n_extra == selected
        return masking_peak, loading_peak

    small, large = peak(300), peak(3000)
    print("peaks (masking, loading) at 300 and 3,000 selected:", small, large)
    assert large[0] <= 1.5 * small[0], (large, small)
    assert large[1] <= 1.5 * small[1] + 2**20, (large, small)  # the labels grow: 8 bytes an image
    with np.load(tmp_path / "sel3000" / "erased.npz") as data:
        images, labels, rows = data["images"], data["labels"], data["index"]
    np.savez(tmp_path / "again.npz", images=images, labels=labels, index=rows)
    assert (tmp_path / "again.npz").read_bytes() == (tmp_path / "sel3000" / "erased.npz").read_bytes()
