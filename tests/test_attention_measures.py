"""#25: Question 2's measures against hand computations."""

import numpy as np
import pytest
import torch

from proxyattention import attention_measures as am


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
    from proxyattention.data import ArraySource
    from proxyattention.runtime import Runtime

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
