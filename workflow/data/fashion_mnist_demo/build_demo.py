"""Build the embedded demo: a stratified subset of Fashion-MNIST, written as IDX files.

Source: Debian's ``dataset-fashion-mnist`` package (Zalando SE, MIT licence), which
installs the original IDX files under /usr/share/datasets/fashion-mnist.

    python workflow/data/fashion_mnist_demo/build_demo.py [SOURCE_DIR]

Takes the first PER_CLASS_TRAIN images of each class from the training file and
the first PER_CLASS_VAL of each class from the test file, in file order, so the
subset is the same on every machine.
"""

import gzip
import sys
from pathlib import Path

import numpy as np

PER_CLASS_TRAIN = 50
PER_CLASS_VAL = 20
HERE = Path(__file__).parent


def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path, "rb").read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    # mtime=0 makes the .gz bytes identical on every rebuild.
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    return np.sort(np.concatenate(picks))


def main(source: Path) -> None:
    for prefix, out_prefix, per_class in (("train", "train", PER_CLASS_TRAIN), ("t10k", "t10k", PER_CLASS_VAL)):
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        keep = first_per_class(labels, per_class)
        write_idx(HERE / f"{out_prefix}-images-idx3-ubyte.gz", images[keep])
        write_idx(HERE / f"{out_prefix}-labels-idx1-ubyte.gz", labels[keep])
        print(f"{out_prefix}: {len(keep)} images")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"))
