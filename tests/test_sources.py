"""Dataset sources and the prepare stage on real images: sklearn digits and skimage photos."""

import hashlib

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import DEMO
from PIL import Image

from proxyattention.data.images import BadImageError, decode_image
from proxyattention.data.splits import draw_split, draw_subset
from proxyattention.sources import list_items
from proxyattention.sources.base import SourceError
from proxyattention.sources.idx import read_idx
from proxyattention.stages.prepare import prepare


def digits_tree(root, per_class=4, classes=(0, 1, 2), val=True):
    """An ImageFolder tree of real scikit-learn digits (8x8, upscaled to 16x16 PNGs)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    files = {}
    for c in classes:
        picks = np.flatnonzero(digits.target == c)
        for i, k in enumerate(picks[: per_class + (2 if val else 0)]):
            split = "val" if val and i >= per_class else "train"
            image = (digits.images[k] * 255 / 16).astype(np.uint8)
            image = cv2.resize(image, (16, 16), interpolation=cv2.INTER_NEAREST)
            path = root / split / f"digit_{c}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), image)
            files[str(path)] = (c, split, image)
    return files


def run_prepare(spec, out):
    prepare(spec, out / "images.npy", out / "index.csv", out / "classes.json", out / "skipped.csv")
    return np.load(out / "images.npy"), pd.read_csv(out / "index.csv", keep_default_na=False)


def spec(path, source="imagefolder", size=16, **kw):
    return {"source": source, "path": str(path), "classes": "auto", "image_size": size, "val_fraction": 0.25,
            "split_seed": 0, "on_bad_image": "fail", **kw}


def test_imagefolder_arrays_equal_decoding_by_hand(tmp_path):
    files = digits_tree(tmp_path / "data")
    images, index = run_prepare(spec(tmp_path / "data"), tmp_path)
    assert len(index) == len(files) == images.shape[0]
    assert images.shape[1:] == (16, 16, 3)
    for row in index.itertuples():
        c, split, gray = files[row.source]
        assert row.split == split
        assert row.label == c  # folder names digit_0..digit_2 sort to labels 0..2
        np.testing.assert_array_equal(images[row.index], np.repeat(gray[:, :, None], 3, axis=2))
        assert row.sha1 == hashlib.sha1(images[row.index].tobytes()).hexdigest()


def test_one_tree_gets_a_fixed_stratified_split(tmp_path):
    digits_tree(tmp_path / "data", per_class=8, val=False)
    (tmp_path / "data" / "train").rename(tmp_path / "flat")  # one tree, no train/val folders
    _, first = run_prepare(spec(tmp_path / "flat"), tmp_path / "a")
    _, second = run_prepare(spec(tmp_path / "flat"), tmp_path / "b")
    assert (first.split == second.split).all()
    assert (first.groupby("label").split.apply(lambda s: (s == "val").sum()) == 2).all()  # 0.25 * 8


def test_a_test_split_leaves_the_validation_draw_as_it_was():
    labels = np.repeat(np.arange(4), [10, 20, 5, 2])
    before = draw_split(labels, [""] * len(labels), 0.2, 7)
    after = draw_split(labels, [""] * len(labels), 0.2, 7, test_fraction=0.25)
    assert ((before == "val") == (after == "val")).all()  # the stop rule sees the same validation
    for label in range(4):
        train = (before == "train") & (labels == label)
        n_test = ((after == "test") & (labels == label)).sum()
        assert n_test == min(round(0.25 * train.sum()), train.sum() - 1)  # stratified, one left to train
    assert ((after == "test") <= (before == "train")).all()
    given = ["train"] * 30 + ["val"] * 7  # a source's own train/val: the test comes out of its train part
    split = draw_split(labels, given, 0.2, 7, test_fraction=0.5)
    assert (split[30:] == "val").all() and (split[:30] == "test").sum() == sum(
        min(round(0.5 * n), n - 1) for n in np.bincount(labels[:30]))


def test_a_training_subset_is_stratified_and_keeps_every_validation_image():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    splits = draw_split(labels, [""] * 100, 0.2, 5, test_fraction=0.1)
    train_counts = np.bincount(labels[splits == "train"])
    per_class = draw_subset(labels, splits, {"per_class": 10}, 5)
    assert (np.bincount(labels[per_class & (splits == "train")]) == np.minimum(train_counts, 10)).all()
    assert per_class[splits != "train"].all()  # validation and test untouched
    total = draw_subset(labels, splits, {"total": 25}, 5)
    kept = np.bincount(labels[total & (splits == "train")], minlength=3)
    assert kept.sum() == 25 and (np.abs(kept - 25 * train_counts / train_counts.sum()) < 1).all()
    assert (draw_subset(labels, splits, {"total": 25}, 5) == total).all()  # drawn once: same every time
    assert draw_subset(labels, splits, {}, 5).all()


def test_prepare_decodes_only_the_subset(tmp_path):
    spec_ = {**spec(DEMO, source="idx"), "train_subset": {"per_class": 7}}
    out = tmp_path
    prepare(spec_, out / "images.npy", out / "index.csv", out / "classes.json", out / "skipped.csv")
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    assert (index[index.split == "train"].groupby("label").size() == 7).all()
    info = __import__("json").loads((out / "classes.json").read_text())
    assert info["n_train"] == 70 < info["n_train_available"]
    assert len(np.load(out / "images.npy")) == len(index)


def test_a_validation_subset_leaves_the_training_subset_as_it_was(tmp_path):
    """val_subset on the demo's official split: exact per-class validation counts, the same
    training images as with train_subset alone, and the left-out images never decoded."""
    base = {**spec(DEMO, source="idx"), "train_subset": {"per_class": 7}}
    runs = {}
    for name, extra in {"train_only": {}, "both": {"val_subset": {"total": 30}}}.items():
        out = tmp_path / name
        out.mkdir()
        prepare({**base, **extra}, out / "images.npy", out / "index.csv", out / "classes.json", out / "skipped.csv")
        runs[name] = pd.read_csv(out / "index.csv", keep_default_na=False)
        assert len(np.load(out / "images.npy")) == len(runs[name])
    train_only, both = runs["train_only"], runs["both"]
    assert list(both[both.split == "train"].sha1) == list(train_only[train_only.split == "train"].sha1)
    val = both[both.split == "val"]
    available = train_only[train_only.split == "val"].groupby("label").size()
    assert len(val) == 30 and (np.abs(val.groupby("label").size() - 30 * available / available.sum()) < 1).all()
    assert set(val.sha1) <= set(train_only[train_only.split == "val"].sha1)
    info = __import__("json").loads((tmp_path / "both" / "classes.json").read_text())
    assert (info["n_val"], info["n_val_available"]) == (30, int(available.sum()))


def test_draw_split_keeps_given_splits_and_is_seeded():
    labels = np.array([0] * 10 + [1] * 10)
    given = ["train"] * 5 + [""] * 15
    a, b = draw_split(labels, given, 0.2, 3), draw_split(labels, given, 0.2, 3)
    assert (a == b).all() and (a[:5] == "train").all()
    assert not (a == draw_split(labels, given, 0.2, 4)).all()


def test_csv_source(tmp_path):
    files = digits_tree(tmp_path / "data", val=True)
    rows = [{"path": p, "label": f"c{c}", "split": s} for p, (c, s, _) in files.items()]
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    images, index = run_prepare(spec(tmp_path / "list.csv", source="csv"), tmp_path / "out")
    assert sorted(index["class"].unique()) == ["c0", "c1", "c2"]
    assert (index.split == "val").sum() == 6


def test_idx_source_is_the_demo(tmp_path):
    items, classes = list_items(spec(DEMO, source="idx"))
    assert len(items) == 700 and classes == [str(i) for i in range(10)]
    raw = read_idx(DEMO / "train-images-idx3-ubyte.gz")
    assert raw.shape == (500, 28, 28)
    np.testing.assert_array_equal(items[7].load(), raw[7])
    assert sum(it.split == "val" for it in items) == 200


def test_truncated_idx_is_reported(tmp_path):
    data = (DEMO / "train-labels-idx1-ubyte.gz").read_bytes()
    import gzip

    raw = gzip.decompress(data)
    (tmp_path / "bad-idx").write_bytes(raw[:-3])
    with pytest.raises(SourceError, match="truncated"):
        read_idx(tmp_path / "bad-idx")


def test_image_kinds_decode_to_rgb(tmp_path):
    from skimage import data

    astronaut = data.astronaut()  # RGB
    cv2.imwrite(str(tmp_path / "gray.png"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY))
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    cv2.imwrite(str(tmp_path / "deep.png"), (cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257))
    cv2.imwrite(str(tmp_path / "naïve name.png"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode_image(tmp_path / "rgba.png"), astronaut)
    np.testing.assert_array_equal(decode_image(tmp_path / "deep.png"), astronaut)
    np.testing.assert_array_equal(decode_image(tmp_path / "naïve name.png"), astronaut)
    gray = decode_image(tmp_path / "gray.png")
    assert gray.shape == astronaut.shape and (gray[..., 0] == gray[..., 2]).all()


def test_exif_rotation_is_applied(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = 255  # left half white
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    out = decode_image(tmp_path / "rotated.jpg")
    assert out.shape[:2] == (40, 20)
    assert out[:18].mean() > 200 and out[22:].mean() < 50  # white half is now on top


def test_bad_files_fail_naming_every_file(tmp_path):
    digits_tree(tmp_path / "data")
    folder = tmp_path / "data" / "train" / "digit_1"
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    good = next(folder.glob("*.png")).read_bytes()
    (folder / "cut.png").write_bytes(good[:20])
    with pytest.raises(BadImageError) as err:
        run_prepare(spec(tmp_path / "data"), tmp_path / "out")
    message = str(err.value)
    for name in ("empty.png", "notes.jpg", "cut.png", "on_bad_image: skip"):
        assert name in message
    assert not (tmp_path / "out" / "images.npy").exists()
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_skip_policy_lists_skipped_files(tmp_path):
    files = digits_tree(tmp_path / "data")
    (tmp_path / "data" / "train" / "digit_0" / "zero.png").write_bytes(b"")
    images, index = run_prepare(spec(tmp_path / "data", on_bad_image="skip"), tmp_path / "out")
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert list(skipped.source.str.rsplit("/", n=1).str[-1]) == ["zero.png"]
    assert len(index) == len(files) == len(images)


def test_empty_class_folder_is_an_error(tmp_path):
    digits_tree(tmp_path / "data")
    (tmp_path / "data" / "train" / "digit_9").mkdir()
    with pytest.raises(SourceError, match="digit_9: empty class folder"):
        list_items(spec(tmp_path / "data"))


def test_class_missing_from_validation_is_recorded(tmp_path):
    digits_tree(tmp_path / "data")
    for f in (tmp_path / "data" / "val" / "digit_2").iterdir():
        f.unlink()
    (tmp_path / "data" / "val" / "digit_2").rmdir()
    run_prepare(spec(tmp_path / "data"), tmp_path / "out")
    import json

    info = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert info["classes_without_val"] == ["digit_2"]


def test_validation_never_overlaps_training_by_content(prepared):
    index = pd.read_csv(prepared["index"], keep_default_na=False)
    train = set(index.loc[index.split == "train", "sha1"])
    val = set(index.loc[index.split == "val", "sha1"])
    assert len(train) > 400 and len(val) > 190
    assert not train & val


def test_prepare_shows_a_bar_on_a_terminal_and_tenths_in_its_log(tmp_path):
    """On a terminal (a pseudo-terminal here) prepare draws a bar there even when stderr is the
    rule's log, as under Snakemake; the log gets one line per tenth and the bar none of its
    carriage returns."""
    import os
    import pty
    import subprocess
    import sys

    log = tmp_path / "prepare.log"
    script = (
        "import logging, sys\n"
        f"sys.stderr = open({str(log)!r}, 'a', buffering=1)\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from proxyattention.stages.prepare import prepare\n"
        f"prepare({{'source': 'idx', 'path': {str(DEMO)!r}, 'image_size': 16, 'val_fraction': 0.2,"
        " 'split_seed': 0, 'on_bad_image': 'fail'}, *[" + ", ".join(
            repr(str(tmp_path / n)) for n in ("images.npy", "index.csv", "classes.json", "skipped.csv")) + "])\n"
    )
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait() == 0, shown.decode(errors="replace")[-2000:]
    shown = shown.decode(errors="replace")
    total = len(pd.read_csv(tmp_path / "index.csv"))
    assert "prepare fashion_mnist_demo" in shown and f"/{total}" in shown and "img/s" in shown
    lines = [line for line in log.read_text().splitlines() if "decoded" in line]
    assert len(lines) == 10 and lines[-1].endswith(f"decoded {total} of {total} images")
    assert "\r" not in log.read_text()


@pytest.mark.parametrize("with_test", [False, True])
def test_a_tree_with_train_and_no_val_draws_validation_from_train(tmp_path, with_test):
    """#22.6: root/train/<class>/* (and perhaps root/test/<class>/*) without val/: the items were
    all 'train', so val_fraction never applied and evaluate failed late. Validation is now drawn
    from the training images by val_fraction, and test/ stays the test split."""
    digits_tree(tmp_path / "data", per_class=10 if with_test else 8, val=False)
    if with_test:  # two of each class's ten images move to test/
        for folder in sorted((tmp_path / "data" / "train").iterdir()):
            (tmp_path / "data" / "test" / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:2]:
                f.rename(tmp_path / "data" / "test" / folder.name / f.name)
    _, index = run_prepare(spec(tmp_path / "data"), tmp_path)
    counts = index.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert (counts["val"] == 2).all() and (counts["train"] == 6).all()  # 0.25 of 8 per class
    assert ("test" in counts) == with_test
    assert index.loc[index.split == "test", "source"].str.contains("/test/").all()


def test_an_image_in_two_splits_leaves_the_later_one(tmp_path):
    """#22.6: the same pixels in train/ and val/ (a file copied across splits) would measure
    validation on a trained image: the copy leaves validation and skipped.csv says why."""
    import json
    import shutil

    files = digits_tree(tmp_path / "data", per_class=4)
    train_file = next(f for f, (c, split, _) in files.items() if split == "train" and c == 1)
    copy = tmp_path / "data" / "val" / "digit_1" / "copied.png"
    shutil.copy(train_file, copy)
    _, index = run_prepare(spec(tmp_path / "data"), tmp_path)
    row = index.set_index("source").loc[str(copy)]
    assert row.split == "duplicate"
    assert index.loc[index.source == train_file, "split"].item() == "train"
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    assert skipped.source.tolist() == [str(copy)] and train_file in skipped.reason.item()
    info = json.loads((tmp_path / "classes.json").read_text())
    assert info["n_cross_split_duplicates"] == 1 and info["n_val"] == 3 * 2
    train = set(index.loc[index.split == "train", "sha1"])
    assert not train & set(index.loc[index.split.isin(["val", "test"]), "sha1"])


def test_a_csv_listing_a_fifo_is_refused_and_paths_outside_its_folder_are_named(tmp_path, caplog):
    """#27.4: a FIFO listed in a CSV made prepare hang forever; `../outside/x.png` and absolute
    paths were read silently. Non-regular files are refused; paths outside the CSV's folder are
    read, with one warning that lists them."""
    import logging
    import os

    files = digits_tree(tmp_path / "outside", val=False)
    (tmp_path / "lists").mkdir()
    rows = [{"path": os.path.relpath(p, tmp_path / "lists"), "label": str(c)} for p, (c, _, _) in sorted(files.items())]
    pd.DataFrame(rows).to_csv(tmp_path / "lists" / "list.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="proxyattention.sources"):
        items, _ = list_items({"source": "csv", "path": str(tmp_path / "lists" / "list.csv")})
    assert len(items) == len(files)
    assert caplog.text.count("outside its folder") == 1 and rows[0]["path"] in caplog.text
    os.mkfifo(tmp_path / "lists" / "pipe.png")
    pd.DataFrame(rows + [{"path": "pipe.png", "label": "0"}]).to_csv(tmp_path / "lists" / "list.csv", index=False)
    with pytest.raises(SourceError, match="pipe.png is not a regular file"):
        list_items({"source": "csv", "path": str(tmp_path / "lists" / "list.csv")})


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (its data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


def test_an_image_declaring_too_many_pixels_is_a_bad_image_never_decoded(tmp_path, monkeypatch):
    """#27.1: a small file can declare a huge image (a 30,000 x 30,000 PNG of 875 KB decoded at a
    5.3 GB peak); above OpenCV's own limit it raised cv2.error and stopped prepare even under skip.
    Its header is read, and over max_pixels it is a bad image: named, skippable, never decoded."""
    import proxyattention.data.images as images

    files = digits_tree(tmp_path / "d")
    bomb = tmp_path / "d" / "train" / "digit_0" / "bomb.png"
    bomb.write_bytes(png_declaring(60_000, 60_000))
    assert len(bomb.read_bytes()) < 200
    decoded = []
    real = images.cv2.imdecode
    monkeypatch.setattr(images.cv2, "imdecode", lambda data, flags: decoded.append(len(data)) or real(data, flags))
    spec = {"source": "imagefolder", "path": str(tmp_path / "d"), "image_size": 16, "val_fraction": 0.2,
            "split_seed": 0, "on_bad_image": "fail"}
    with pytest.raises(BadImageError, match=r"bomb\.png: declares 60000x60000 px, over the limit of 100,000,000"):
        run_prepare(spec, tmp_path / "out1")
    assert len(bomb.read_bytes()) not in decoded
    (tmp_path / "out2").mkdir()
    _, index = run_prepare({**spec, "on_bad_image": "skip"}, tmp_path / "out2")
    skipped = pd.read_csv(tmp_path / "out2" / "skipped.csv")
    assert list(skipped.source) == [str(bomb)] and len(index) == len(files)
    with pytest.raises(BadImageError, match=r"declares 16x16 px, over the limit of 100 pixels"):
        images.decode_image(next(iter(files)), max_pixels=100)


PEAK_RSS = """
import json, resource, sys
from proxyattention.stages.prepare import prepare
spec = json.loads(sys.argv[1]); out = sys.argv[2]
prepare(spec, out + "/images.npy", out + "/index.csv", out + "/classes.json", out + "/skipped.csv", threads=1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_one_bad_image_under_skip_does_not_copy_the_array_into_memory(tmp_path):
    """#27.2: one bad image under skip copied the whole prepared array into memory twice (at 3,000
    images of 224 px: 1,388 MiB peak against 527 MiB). The kept rows now go straight to the file:
    peak memory with one bad image stays within 1.2x of the same run without it."""
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "d" / f"c{c}").mkdir(parents=True)
        for i in range(600):
            cv2.imwrite(str(tmp_path / "d" / f"c{c}" / f"{i}.png"), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    spec = {"source": "imagefolder", "path": str(tmp_path / "d"), "image_size": 224, "val_fraction": 0.2,
            "split_seed": 0, "on_bad_image": "skip"}  # 1,200 images of 224 px: 181 MB

    def peak(out):
        out.mkdir()
        proc = subprocess.run([sys.executable, "-c", PEAK_RSS, json.dumps(spec), str(out)], capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return int(proc.stdout.split()[-1])

    clean = peak(tmp_path / "clean")
    (tmp_path / "d" / "c0" / "broken.png").write_bytes(b"not a png")
    with_bad = peak(tmp_path / "bad")
    assert len(pd.read_csv(tmp_path / "bad" / "skipped.csv")) == 1
    assert np.array_equal(np.load(tmp_path / "bad" / "images.npy", mmap_mode="r")[:5],
                          np.load(tmp_path / "clean" / "images.npy", mmap_mode="r")[:5])
    print("peak RSS MiB without and with one bad image:", clean, with_bad)
    assert with_bad <= 1.2 * clean, (with_bad, clean)


def test_prepare_records_where_the_verdicts_split_comes_from_and_the_verdicts_print_it(tmp_path):
    """The verdicts' split is named by its origin, never "validation" when it is a dataset's
    official test split: IDX files' t10k, a folder's val/, a draw by val_fraction or test_fraction."""
    import json

    from proxyattention.analysis.verdicts import verdict_split
    from proxyattention.sources import split_origins

    run_prepare(spec(DEMO, source="idx", size=8), tmp_path / "idx")
    origins = json.loads((tmp_path / "idx" / "classes.json").read_text())["split_origins"]
    assert origins == {"val": "the official test split of the IDX files (t10k)", "test": None}
    digits_tree(tmp_path / "tree")
    items, _ = list_items(spec(tmp_path / "tree"))
    assert split_origins(spec(tmp_path / "tree"), items)["val"] == "the images of val/ in the dataset folder"
    digits_tree(tmp_path / "flat", val=False)
    flat = spec(tmp_path / "flat", test_fraction=0.2)
    items, _ = list_items(flat)
    assert split_origins(flat, items) == {
        "val": "a validation split drawn from the training images by val_fraction 0.25, split_seed 0",
        "test": "a test split drawn from the training images by test_fraction 0.2, split_seed 0"}
    assert split_origins({"source": "torchvision", "name": "FashionMNIST"}, [])["val"].startswith("a validation split drawn")

    from proxyattention.sources.base import Item

    official = split_origins({"source": "torchvision", "name": "FashionMNIST"}, [Item("x", 0, "val")])
    assert official["val"] == "the official test split of FashionMNIST"
    frame = pd.DataFrame({"accuracy": [0.9], "test_accuracy": [np.nan], "val_origin": [official["val"]],
                          "test_origin": [""]})
    assert verdict_split(frame) == ("accuracy", "the official test split of FashionMNIST "
                                                "(held out from training and selection)")
    assert verdict_split(frame, stop_rule=True)[1].endswith("(the stop rule also chose on it)")
    # a summary written before the record keeps the internal name
    assert verdict_split(frame.drop(columns=["val_origin", "test_origin"])) == ("accuracy", "validation")


def test_a_class_without_validation_images_is_a_warning_the_run_prints_in_one_line(tmp_path):
    """#42 (smaller): "classes ['nine'] have no validation images" was only in the prepare job's
    log (and at 1,000 classes a thousand names). prepare keeps it in classes.json, which the end of
    the run prints; a long list names the first eight and counts the rest."""
    import json

    from proxyattention.stages.prepare import name_list

    root = tmp_path / "data"
    digits_tree(root, per_class=4, classes=(0, 1, 2), val=True)
    for path in (root / "val" / "digit_2").iterdir():
        path.unlink()
    (root / "val" / "digit_2").rmdir()
    run_prepare(spec(root), tmp_path / "out")
    warnings = json.loads((tmp_path / "out" / "classes.json").read_text())["warnings"]
    assert warnings == ["1 class (digit_2) has no validation images: their validation accuracy and recall are not "
                        "measured (raise val_fraction, or add validation images)"]
    assert name_list([f"c{i}" for i in range(750)], "class", "classes") == \
        "750 classes (c0, c1, c2, c3, c4, c5, c6, c7 and 742 more)"
