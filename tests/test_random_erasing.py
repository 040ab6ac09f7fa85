"""The erasing arm: torchvision's RandomErasing on every training image in every epoch of its
cycles, drawn from the workflow's streams and applied on the batch's device; a positive control
that shares everything else with baseline."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from conftest import make_config
from scipy import stats

from proxyattention.data.batches import ArraySource, augment, epoch_plan, make_loader, normalise
from proxyattention.data.random_erasing import DEFAULTS, draw_boxes, epoch_boxes, settings_of
from proxyattention.settings.arms import comparisons
from proxyattention.settings.schema import ConfigError
from proxyattention.settings.stage_settings import stage_settings
from proxyattention.settings.validate import check_config

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def torchvision_boxes(n, height, width, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
    """torchvision's own draws: (top, left, height, width), height 0 when not erased (it returns
    the whole image with the image itself as value when no try fits: nothing changes)."""
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for k in range(n):
        if torch.rand(1) < p:
            i, j, h, w, v = T.RandomErasing.get_params(image, scale=scale, ratio=ratio, value=[0])
            if v.shape[-2:] != image.shape[-2:]:
                boxes[k] = i, j, h, w
    return boxes


@pytest.mark.parametrize("size", [(64, 64), (28, 40)])
def test_the_boxes_follow_torchvisions_distribution(size):
    """Same algorithm, other random numbers: each statistic's distribution equals torchvision's
    (two-sample KS over 20,000 draws each) and every box lies in the image."""
    h, w = size
    n = 20000
    ours = draw_boxes(np.random.default_rng(1), n, h, w, **DEFAULTS)
    theirs = torchvision_boxes(n, h, w)
    on, off = ours[ours[:, 2] > 0], theirs[theirs[:, 2] > 0]
    assert abs(len(on) / n - len(off) / n) < 0.02 and abs(len(on) / n - 0.5) < 0.02
    assert (on[:, 0] + on[:, 2] <= h).all() and (on[:, 1] + on[:, 3] <= w).all() and (on[:, :2] >= 0).all()
    assert (on[:, 2] < h).all() and (on[:, 3] < w).all()  # torchvision's fit: strictly smaller
    for name, a, b in (("area", on[:, 2] * on[:, 3], off[:, 2] * off[:, 3]),
                       ("height", on[:, 2], off[:, 2]), ("top", on[:, 0], off[:, 0]), ("left", on[:, 1], off[:, 1])):
        assert stats.ks_2samp(a, b).pvalue > 1e-3, name
    area = on[:, 2] * on[:, 3] / (h * w)
    assert 0.01 < area.min() and area.max() < 0.36  # 2-33% of the area, up to rounding


def test_no_box_when_no_try_fits():
    boxes = draw_boxes(np.random.default_rng(0), 500, 8, 8, p=1.0, scale=[0.98, 0.99], ratio=[1.0, 1.0])
    assert (boxes == 0).all()  # sqrt(0.98 * 64) rounds to 8 = the side: never fits, as torchvision


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_device_transform_erases_as_torchvisions_erase(prepared, channels_last):
    """The loader's batch equals, bit for bit, the numpy crop-and-flip reference, normalised, and
    then torchvision's F.erase(image, top, left, height, width, 0) image by image."""
    images = np.load(prepared["images"], mmap_mode="r")
    n = 100
    source = ArraySource([(images, np.arange(n), np.arange(n) % 10)])
    erasing = settings_of({"p": 0.7})
    loader, sampler = make_loader(source, MEAN, STD, 32, seed=(3, 1), train=True, hflip=True, crop_padding=4,
                                  channels_last=channels_last, erasing=erasing)
    height, width = images.shape[1:3]
    erased = 0
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        plan = epoch_plan((3, 1), epoch, n, n, True, 4)
        boxes = epoch_boxes((3, 1), epoch, n, height, width, erasing)
        for (x, _), (_, _, indices) in zip(loader, iter(sampler)):
            want = normalise(augment(source.gather(indices)[0], plan[indices], 4), MEAN, STD)
            for k, row in enumerate(indices):
                top, left, h, w = boxes[row].tolist()
                if h:
                    want[k] = F.erase(want[k], top, left, h, w, torch.tensor(0.0))
                    erased += 1
            assert torch.equal(x, want)
            assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert 100 < erased < 180  # p 0.7 of 200 image-epochs


def test_erasing_changes_nothing_else_and_does_not_depend_on_threads(prepared):
    """Without erasing the batches are what they were (plan of 3 columns); with it, the same
    images, order, crops and flips, and the same boxes with 0 or 2 gather threads."""
    images = np.load(prepared["images"], mmap_mode="r")
    source = ArraySource([(images, np.arange(90), np.arange(90) % 10)])
    batches = {}
    for name, erasing, threads in (("plain", None, 0), ("erased", settings_of({}), 0), ("threads", settings_of({}), 2)):
        loader, sampler = make_loader(source, MEAN, STD, 30, seed=(5, 2), train=True, hflip=True, crop_padding=2,
                                      erasing=erasing, num_workers=threads)
        sampler.set_epoch(1)
        batches[name] = [x for x, _ in loader]
    for plain, erased, threaded in zip(batches["plain"], batches["erased"], batches["threads"]):
        assert torch.equal(erased, threaded)
        changed = (plain != erased).any(dim=1)  # (B, H, W): the erased pixels only
        assert torch.equal(erased[changed.unsqueeze(1).expand_as(erased)],
                           torch.zeros_like(erased)[changed.unsqueeze(1).expand_as(erased)])
        assert changed.any()


def test_an_erasing_arm_trains_like_baseline_with_erasing_in_its_cycles_only():
    arms = {"baseline": {"kind": "baseline"}, "proxy": {"kind": "proxy"},
            "random_erase": {"kind": "random_erase", "matches": "proxy"},
            "erasing": {"kind": "erasing", "erasing": {"p": 0.25}}}
    config = make_config(arms=arms)
    check_config(config)
    cycle1 = stage_settings(config, "fm", "lite0", 1, "train", "erasing")
    assert cycle1["erasing"] == {"p": 0.25, "scale": [0.02, 0.33], "ratio": [0.3, 3.3]}
    baseline = stage_settings(config, "fm", "lite0", 1, "train", "baseline")
    assert "erasing" not in baseline  # nothing reruns for the other arms
    assert {k: v for k, v in cycle1.items() if k != "erasing"} == baseline
    assert "erasing" not in stage_settings(config, "fm", "lite0", 0, "train", "erasing")  # the shared finetune
    pairs = comparisons(config)
    assert ("erasing", "baseline") in pairs and not any("erasing" in p for p in pairs if p[1] != "baseline")


@pytest.mark.parametrize("spec,words", [
    ({"kind": "erasing", "erasing": {"p": 1.5}}, "arms.e.erasing.p: a probability from 0 to 1"),
    ({"kind": "erasing", "erasing": {"scale": [0.4, 0.1]}}, "arms.e.erasing.scale: a pair [a, b] with 0 < a <= b < 1"),
    ({"kind": "erasing", "erasing": {"ratio": [0, 2]}}, "arms.e.erasing.ratio"),
    ({"kind": "erasing", "erasing": {"value": "random"}}, "arms.e.erasing: give a mapping of p, scale and ratio"),
    ({"kind": "erasing", "cam_method": "gradcam"}, "arms.e: an erasing arm adds no images; it takes only kind"),
    ({"kind": "baseline", "erasing": {"p": 0.5}}, "erasing belongs to an arm of kind erasing"),
])
def test_a_wrong_erasing_arm_is_refused_naming_it(spec, words):
    with pytest.raises(ConfigError) as err:
        check_config(make_config(arms={"baseline": {"kind": "baseline"}, "e": spec}))
    assert words in str(err.value)
