"""Readers of the arrays the stages hand to each other (numpy only: cheap to import)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


NO_MASK = 255  # prepare_masks' masks.npy: every pixel of an image that has no mask (else 0/1)


def empty_maps(maps: np.ndarray) -> np.ndarray:
    """True for each map (N, H, W) that is constant over its covered (not NaN) pixels, or covers
    none: nothing in it to threshold or erase."""
    if not len(maps):
        return np.zeros(0, dtype=bool)
    flat = maps.reshape(len(maps), -1)
    hi, lo = flat.max(1), flat.min(1)
    nan = np.isnan(hi)  # a training-pass map brought back from its view: uncovered pixels are NaN
    if nan.any():
        part = flat[nan]
        hi[nan] = np.where(np.isnan(part), -np.inf, part).max(1)
        lo[nan] = np.where(np.isnan(part), np.inf, part).min(1)
    return hi <= lo


def load_cams(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """maps (float32, N x S x S), prepared-array rows and explained classes from ``cams.npz``."""
    with np.load(path, allow_pickle=False) as data:
        return data["maps"].astype(np.float32), data["index"], data["target"]


def npz_array(path, name: str) -> np.ndarray:
    """Array ``name`` of an ``.npz`` file, memory-mapped (read-only) where it is stored uncompressed
    (``np.savez``; a member's bytes then lie contiguous in the file), else read whole: large arrays
    are read a few rows at a time by the page cache instead of all at once into this process."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path, allow_pickle=False) as data:
            return data[name]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the member's local header: its name and extra field lengths at bytes 26-29
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: {name} holds Python objects; refused")
    if 0 in shape:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def cams_memmap(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """maps (float16 as stored, memory-mapped), rows and explained classes of ``cams.npz``."""
    with np.load(path, allow_pickle=False) as data:
        rows, target = data["index"], data["target"]
    return npz_array(path, "maps"), rows, target


def load_erased(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """images (uint8, N x S x S x 3), labels and source rows from ``erased.npz``."""
    with np.load(path, allow_pickle=False) as data:
        return data["images"], data["labels"], data["index"]


class NpzWriter:
    """Write an ``.npz`` member by member as ``np.savez`` does (the same bytes), one of them in
    chunks of rows: a large array never has to be whole in memory."""

    def __init__(self, path):
        import zipfile

        self.archive = zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def write(self, name: str, array: np.ndarray) -> None:
        with self.archive.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)

    def stream(self, name: str, shape: tuple, dtype, chunks) -> None:
        """Member ``name`` of ``shape`` and ``dtype`` from ``chunks`` (arrays of rows, in order)."""
        dtype = np.dtype(dtype)
        with self.archive.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": tuple(shape)})
            written = 0
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                f.write(chunk.data)
                written += len(chunk)
        if written != shape[0]:
            raise ValueError(f"{name}: {written} rows written for a shape of {shape}")

    def close(self) -> None:
        self.archive.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_prepared(images_path, index_path) -> tuple[np.ndarray, pd.DataFrame]:
    """The prepared images (memory-mapped, read-only) and their index table."""
    import pandas as pd

    return np.load(images_path, mmap_mode="r"), pd.read_csv(index_path, keep_default_na=False)
