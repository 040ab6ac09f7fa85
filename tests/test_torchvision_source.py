"""`source: torchvision`: datasets read through torchvision's own classes, with their official
splits, offline from the demo's IDX files laid out the way torchvision expects them."""

import gzip
import inspect

import numpy as np
import pandas as pd
import pytest
import torchvision.datasets
from conftest import DEMO, make_config

from proxyattention.settings.schema import ConfigError
from proxyattention.settings.validate import check_config
from proxyattention.sources.torchvision import SPLITS, chosen_splits, split_kwargs
from proxyattention.stages.prepare import prepare


def torchvision_root(tmp_path, name: str):
    """root/<name>/raw/<file> uncompressed: where torchvision's MNIST family reads from."""
    raw = tmp_path / "tv" / name / "raw"
    raw.mkdir(parents=True)
    for gz in DEMO.glob("*-ubyte.gz"):
        (raw / gz.name[:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
    return tmp_path / "tv"


def prepared(spec: dict, out):
    out.mkdir()
    spec = {"image_size": 32, "val_fraction": 0.2, "split_seed": 0, "on_bad_image": "fail", **spec}
    prepare(spec, out / "images.npy", out / "index.csv", out / "classes.json", out / "skipped.csv")
    return np.load(out / "images.npy"), pd.read_csv(out / "index.csv", keep_default_na=False)


@pytest.mark.parametrize("name", ["FashionMNIST", "MNIST"])
def test_prepared_arrays_equal_reading_the_same_files_as_idx(tmp_path, name):
    root = torchvision_root(tmp_path, name)
    ours, our_index = prepared({"source": "torchvision", "name": name, "path": str(root)}, tmp_path / "tv_out")
    theirs, their_index = prepared({"source": "idx", "path": str(DEMO)}, tmp_path / "idx_out")
    np.testing.assert_array_equal(ours, theirs)
    for column in ("label", "split", "sha1"):
        assert our_index[column].tolist() == their_index[column].tolist(), column
    assert set(our_index.split) == {"train", "val"}  # the official test split is the validation
    classes = __import__("json").loads((tmp_path / "tv_out" / "classes.json").read_text())["classes"]
    assert classes == getattr(torchvision.datasets, name).classes  # names come from the dataset


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_supported_class_takes_its_split_arguments(name):
    cls = getattr(torchvision.datasets, name)
    how, splits, (train, val) = SPLITS[name]
    parameters = inspect.signature(cls).parameters
    assert "download" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())  # QMNIST
    if how is None:
        assert "split" not in parameters and "train" not in parameters and train is None
        return
    assert train in splits and val in splits and train != val
    for split in splits:
        kwargs = split_kwargs(name, split)
        inspect.signature(cls).bind_partial("root", **kwargs)  # a keyword the class accepts
        if how == "train_flag":
            assert kwargs == {"train": split == "train"}
    assert chosen_splits({"name": name}) == (train, val)
    assert chosen_splits({"name": name, "val_split": splits[-1]})[1] == splits[-1]


@pytest.mark.parametrize("entry, words", [
    ({"name": "CocoDetection"}, "datasets.fm.name: CocoDetection is not a classification dataset"),
    ({"name": "Cifar100"}, "datasets.fm.name: Cifar100 is not a class of torchvision.datasets"),
    ({"name": "FashionMNIST", "val_split": "val"}, "datasets.fm.val_split: FashionMNIST has no split 'val'"),
    ({"name": "EuroSAT", "val_split": "test"}, "datasets.fm.val_split: EuroSAT has no splits"),
    ({"name": "DTD", "train_split": "val"}, "both 'val'"),
    # #22.1: FGVCAircraft's trainval holds val: validation would be measured on trained images
    ({"name": "FGVCAircraft", "train_split": "trainval"},
     "datasets.fm: train_split 'trainval' and val_split 'val' share images (FGVCAircraft's 'trainval' holds 'val')"),
    ({"name": "FGVCAircraft", "val_split": "trainval"}, "train_split 'train' and val_split 'trainval' share images"),
    ({"name": "CIFAR100", "path": "nowhere/cifar"}, "datasets.fm.path: nowhere/cifar does not exist; set download: true"),
])
def test_a_wrong_torchvision_entry_is_refused_before_any_job(tmp_path, entry, words):
    config = make_config(datasets={"fm": {"source": "torchvision", "path": str(tmp_path), **entry}})
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert words in str(err.value)


def test_trainval_against_test_is_accepted(tmp_path):
    config = make_config(datasets={"fm": {"source": "torchvision", "name": "FGVCAircraft", "path": str(tmp_path),
                                          "train_split": "trainval", "val_split": "test"}})
    check_config(config)


def test_download_true_needs_no_folder_yet(tmp_path):
    config = make_config(datasets={"fm": {"source": "torchvision", "name": "CIFAR100", "download": True,
                                          "path": str(tmp_path / "not_yet")}})
    check_config(config)  # the prepare job downloads; nothing is fetched while checking
    assert not (tmp_path / "not_yet").exists()


def test_a_missing_dataset_without_download_names_the_fix(tmp_path):
    from proxyattention.sources import list_items
    from proxyattention.sources.base import SourceError

    with pytest.raises(SourceError, match="FashionMNIST .*set download: true"):
        list_items({"source": "torchvision", "name": "FashionMNIST", "path": str(tmp_path)})
