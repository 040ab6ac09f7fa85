"""Faithfulness of the maps (analysis/faithfulness.py, stages/faithfulness.py): ROAD through
pytorch-grad-cam's own metrics, with ties broken and the imputer's noise seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from proxyattention.analysis import faithfulness as fa

SIZE, PATCH = 24, 5


class PatchNet(nn.Module):
    """A small CNN with a GAP + linear head, its modules named as a ResNet's (layer4, fc)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, 2)

    def forward(self, x):
        return self.fc(self.layer4(self.stem(x)).mean((2, 3)))


def patch_task(n: int, rng: np.random.Generator):
    """Grey noise images whose class is the colour of one 5 x 5 patch at a random place (red: 0,
    green: 1): the only evidence is the patch."""
    x = rng.uniform(0.3, 0.5, size=(n, 3, SIZE, SIZE)).astype(np.float32)
    y = rng.integers(0, 2, n)
    where = rng.integers(0, SIZE - PATCH, size=(n, 2))
    for i in range(n):
        r, c = where[i]
        x[i, :, r:r + PATCH, c:c + PATCH] = 0.1
        x[i, y[i], r:r + PATCH, c:c + PATCH] = 0.95
    return torch.from_numpy(x), torch.from_numpy(y), where


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = PatchNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        x, y, _ = patch_task(64, rng)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    x, y, where = patch_task(24, np.random.default_rng(1))
    assert (model(x).argmax(1) == y).float().mean() > 0.95  # it learnt the patch
    return model, x, y, where


def gradcam(model, x, classes):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = GradCAM(model=model, target_layers=[model.layer4[0]])
    try:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()


def test_a_trained_model_s_maps_are_faithful_and_moved_or_randomised_maps_are_not(trained):
    model, x, y, _ = trained
    maps = gradcam(model, x, y)
    rng = np.random.default_rng(0)
    offsets = fa.draw_offsets(len(maps), SIZE, SIZE, rng)
    moved = fa.moved_maps(maps, offsets)
    import copy

    randomised = copy.deepcopy(model)
    assert fa.randomise_top(randomised, 0) == ["fc", "layer4"]
    random_maps = gradcam(randomised, x, y)
    scores = {}
    for name, kind in (("own", maps), ("moved", moved), ("random_model", random_maps)):
        ranks = fa.tie_broken_ranks(kind, np.random.default_rng(1))
        scores[name] = fa.road_curves(model, x, ranks, y, seed=0)
    drop = {k: -v["morf"].mean() for k, v in scores.items()}  # how far confidence falls, most relevant first
    assert drop["own"] > 0.1
    assert drop["own"] >= 2 * drop["moved"], drop
    assert drop["own"] >= 2 * drop["random_model"], drop
    assert scores["own"]["combined"].mean() > scores["moved"]["combined"].mean()
    # the randomised model's maps differ from the trained model's (Adebayo et al.'s sanity check)
    assert np.nanmean(fa.spearman(maps, random_maps)) < 0.5


def test_after_tie_breaking_a_half_zero_map_loses_exactly_the_share_asked():
    rng = np.random.default_rng(0)
    half = np.zeros((1, 16, 16), np.float32)
    half[0, :8] = rng.uniform(0.1, 1, size=(8, 16))  # the other half: a zero plateau, as ReLU'd Grad-CAM has
    ranks = fa.tie_broken_ranks(half, np.random.default_rng(1))
    assert sorted(ranks.ravel()) == list(range(256))
    assert (ranks[0, :8] > ranks[0, 8:].max()).all()  # ties are broken below every positive pixel
    n = 256
    for p in fa.PERCENTILES:
        expected = n - int(np.ceil(p / 100 * (n - 1)))  # np.percentile interpolates between ranks
        assert fa.removed_share(ranks[0], p, True) * n == expected
        assert fa.removed_share(ranks[0], p, False) * n == expected  # least relevant first alike
        assert abs(expected - (100 - p) / 100 * n) <= 1  # the share asked, to one pixel
    # without tie-breaking the plateau goes whole: least relevant first at p = 80 (20% asked)
    # removes every zero, half the map; a constant map loses everything at every percentile
    assert fa.removed_share(half[0], 80, False) == 0.5
    assert fa.removed_share(np.zeros((16, 16)), 80, True) == 1.0


def test_the_curves_equal_a_direct_seeded_call_of_the_library(trained):
    from pytorch_grad_cam.metrics.road import ROADCombined, ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, y, _ = trained
    x, y = x[:6], y[:6]
    ranks = fa.tie_broken_ranks(gradcam(model, x, y), np.random.default_rng(0))
    ours = fa.road_curves(model, x, ranks, y, seed=3, percentiles=(20, 50, 80))
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in y]
    for name, metric, code in (("morf", ROADMostRelevantFirst, 0), ("lerf", ROADLeastRelevantFirst, 1)):
        for j, p in enumerate((20, 50, 80)):
            torch.manual_seed(3 * 1000 + code * 100 + p)
            np.testing.assert_array_equal(ours[name][:, j], metric(p)(x, ranks, targets, model))
    np.testing.assert_allclose(ours["combined"], (ours["lerf"].mean(1) - ours["morf"].mean(1)) / 2)
    # and the library's own combined score, with its imputer's noise switched off, is the same formula
    from pytorch_grad_cam.metrics import road

    quiet = road.NoisyLinearImputer.__init__.__defaults__
    road.NoisyLinearImputer.__init__.__defaults__ = (0.0, quiet[1])
    try:
        combined = ROADCombined(percentiles=[20, 50, 80])(x, ranks, targets, model)
        silent = fa.road_curves(model, x, ranks, y, seed=3, percentiles=(20, 50, 80))
    finally:
        road.NoisyLinearImputer.__init__.__defaults__ = quiet
    np.testing.assert_allclose(silent["combined"], combined, atol=1e-6)


def test_moved_maps_are_the_control_s_cyclic_shift():
    from proxyattention.data.erasing import random_masks

    rng = np.random.default_rng(5)
    maps = rng.random((4, 8, 8)).astype(np.float32)
    masks = maps > 0.8
    offsets = np.full((4, 2), -1)
    moved_masks = random_masks(masks, "cam_shape", np.random.default_rng(9), offsets)
    assert (offsets >= 0).all()
    np.testing.assert_array_equal(fa.moved_maps(maps, offsets) > 0.8, moved_masks)
    # offsets drawn here follow random_masks' own order of draws (y, then x, per image)
    np.testing.assert_array_equal(fa.draw_offsets(4, 8, 8, np.random.default_rng(9)), offsets)
