"""#25: object masks for the pointing game, from every source that has them: a parallel masks/
tree beside an ImageFolder, a CSV's mask column, and torchvision's OxfordIIITPet trimaps (on a
fake root laid out as torchvision expects: the dataset cannot be downloaded here)."""

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import make_config
from test_sources import digits_tree

from proxyattention.data.images import BadImageError
from proxyattention.settings.schema import ConfigError
from proxyattention.settings.validate import check_config
from proxyattention.sources.base import SourceError
from proxyattention.stages.prepare import prepare
from proxyattention.files.artifacts import NO_MASK
from proxyattention.stages.prepare_masks import prepare_masks


def run_prepare(spec, out):
    out.mkdir(parents=True, exist_ok=True)
    spec = {"image_size": 32, "val_fraction": 0.2, "split_seed": 0, "on_bad_image": "fail", **spec}
    prepare(spec, out / "images.npy", out / "index.csv", out / "classes.json", out / "skipped.csv")
    prepare_masks(spec, out / "index.csv", out / "masks.npy")
    masks = np.load(out / "masks.npy")
    return (np.load(out / "images.npy"), masks, pd.read_csv(out / "index.csv", keep_default_na=False),
            int((masks != NO_MASK).any((1, 2)).sum()))


def digit_masks(files: dict, masks_root, root, skip: int = 0):
    """A mask per digit image (its inked pixels), in a tree mirroring the image tree, saved as PNG
    whatever the image's type; the first ``skip`` images get none."""
    expected = {}
    for k, (path, (_, _, image)) in enumerate(sorted(files.items())):
        if k < skip:
            continue
        mask = (image > 0).astype(np.uint8) * 255
        target = masks_root / (path[len(str(root)) + 1:])
        target = target.with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), mask)
        expected[path] = image > 0
    return expected


def test_an_imagefolder_masks_tree_gives_every_image_its_mask(tmp_path):
    files = digits_tree(tmp_path / "digits")
    expected = digit_masks(files, tmp_path / "masks", tmp_path / "digits", skip=2)
    images, masks, index, n_masks = run_prepare(
        {"source": "imagefolder", "path": str(tmp_path / "digits"), "masks": str(tmp_path / "masks")}, tmp_path / "out")
    assert masks.shape == (len(images), 32, 32) and masks.dtype == np.uint8
    assert n_masks == len(expected) == len(images) - 2
    for row in index.itertuples():
        if row.source in expected:  # 16 px digits at 32 px: nearest neighbour doubles every pixel
            want = np.repeat(np.repeat(expected[row.source], 2, 0), 2, 1)
            np.testing.assert_array_equal(masks[row.index], want.astype(np.uint8))
        else:
            assert (masks[row.index] == NO_MASK).all()


def test_a_dataset_without_masks_writes_an_empty_masks_file(tmp_path):
    digits_tree(tmp_path / "digits")
    images, masks, _, n_masks = run_prepare({"source": "imagefolder", "path": str(tmp_path / "digits")}, tmp_path / "out")
    assert masks.shape == (0, 32, 32) and n_masks == 0 and len(images) > 0


def test_a_csv_mask_column_and_a_mask_of_the_wrong_size(tmp_path):
    files = digits_tree(tmp_path / "digits", val=False)
    expected = digit_masks(files, tmp_path / "masks", tmp_path / "digits")
    rows = [{"path": p, "label": str(c), "mask": str(tmp_path / "masks" / p[len(str(tmp_path / "digits")) + 1:])}
            for p, (c, _, _) in sorted(files.items())]  # the digits are PNGs: the mask has the image's path there
    rows[0]["mask"] = ""  # no mask for this one
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    _, masks, index, n_masks = run_prepare({"source": "csv", "path": str(tmp_path / "list.csv")}, tmp_path / "out")
    assert n_masks == len(files) - 1
    first = index.index[index.source == rows[0]["path"]][0]
    assert (masks[first] == NO_MASK).all()
    second = index.loc[index.source == rows[1]["path"], "index"].iloc[0]
    assert masks[second].sum() == 4 * expected[rows[1]["path"]].sum()
    cv2.imwrite(rows[1]["mask"], np.zeros((10, 16), np.uint8))  # 16x10 for a 16x16 image
    with pytest.raises(BadImageError, match=r"mask of 16x10 px for an image of 16x16 px"):
        run_prepare({"source": "csv", "path": str(tmp_path / "list.csv")}, tmp_path / "again")


def test_a_masks_tree_that_holds_no_mask_is_refused(tmp_path):
    digits_tree(tmp_path / "digits")
    (tmp_path / "masks" / "train").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "masks" / "train" / "other.png"), np.zeros((4, 4), np.uint8))
    spec = {"source": "imagefolder", "path": str(tmp_path / "digits")}
    with pytest.raises(SourceError, match="no mask matches an image"):
        run_prepare({**spec, "masks": str(tmp_path / "masks")}, tmp_path / "out")
    with pytest.raises(SourceError, match="the masks folder does not exist"):
        run_prepare({**spec, "masks": str(tmp_path / "nowhere")}, tmp_path / "out")


def pets_root(tmp_path, n=6):
    """oxford-iiit-pet/{images/*.jpg, annotations/{trainval,test}.txt, annotations/trimaps/*.png}
    as torchvision's OxfordIIITPet reads it; trimaps: 1 pet, 2 background, 3 border."""
    base = tmp_path / "pets" / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    from skimage import data

    photo = cv2.resize(data.chelsea(), (48, 40))  # a real cat photograph, 48 x 40
    trimaps = {}
    for split in ("trainval", "test"):
        lines = []
        for i in range(n):
            breed, label = ("Abyssinian", 1) if i % 2 == 0 else ("beagle", 2)
            name = f"{breed}_{split}{i}"
            shifted = np.roll(photo, 3 * i + (20 if split == "test" else 0), axis=1)  # every image its own pixels
            cv2.imwrite(str(base / "images" / f"{name}.jpg"), shifted[:, :, ::-1])
            trimap = np.full((40, 48), 2, np.uint8)
            trimap[8 + i: 24 + i, 10:30] = 3
            trimap[10 + i: 22 + i, 12:28] = 1
            cv2.imwrite(str(base / "annotations" / "trimaps" / f"{name}.png"), trimap)
            trimaps[name] = trimap
            lines.append(f"{name} {label} {1 + i % 2} 1")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "pets", trimaps


def test_oxford_pets_trimaps_become_object_masks(tmp_path):
    root, trimaps = pets_root(tmp_path)
    spec = {"source": "torchvision", "name": "OxfordIIITPet", "path": str(root), "masks": "trimap",
            "image_size": 24}
    images, masks, index, n_masks = run_prepare(spec, tmp_path / "out")
    assert n_masks == len(images) == 12 and set(index.split) == {"train", "val"}
    for row in index.itertuples():
        name = f"{'Abyssinian' if row.label == 0 else 'beagle'}_{'trainval' if row.split == 'train' else 'test'}"
        number = int(row.source.split("#")[1])
        want = cv2.resize((trimaps[f"{name}{number}"] != 2).astype(np.uint8), (24, 24),
                          interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(masks[row.index], want)  # pet and border are object
        assert 0 < masks[row.index].sum() < 24 * 24


def test_masks_a_source_cannot_have_are_refused_before_any_job(tmp_path):
    root, _ = pets_root(tmp_path, n=2)
    with pytest.raises(ConfigError, match=r"datasets\.fm\.masks: FashionMNIST has no masks .* OxfordIIITPet"):
        check_config(make_config(datasets={"fm": {"source": "torchvision", "name": "FashionMNIST", "path": str(root),
                                                  "masks": "trimap"}}))
    with pytest.raises(ConfigError, match=r"datasets\.fm\.masks: .*idx"):
        check_config(make_config(datasets={"fm": {**make_config()["datasets"]["fm"], "masks": "somewhere"}}))
    with pytest.raises(ConfigError, match=r"datasets\.fm\.masks: .*does not exist"):
        digits_tree(tmp_path / "digits")
        check_config(make_config(datasets={"fm": {"source": "imagefolder", "path": str(tmp_path / "digits"),
                                                  "masks": str(tmp_path / "nowhere")}}))
    check_config(make_config(datasets={"fm": {"source": "torchvision", "name": "OxfordIIITPet", "path": str(root),
                                              "masks": "trimap"}}))
