"""Image decoding and resizing with OpenCV, the one place pixels enter the workflow."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


class BadImageError(ValueError):
    """An input file that is not a decodable image."""


MAX_PIXELS = 100_000_000  # the schema's default of datasets.<name>.max_pixels


def declared_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding it (Pillow reads only the
    header); None where Pillow does not know the format (OpenCV may still)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check would raise at open: the caller checks max_pixels
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:
        return None


def refuse_oversized(path: Path, max_pixels: int) -> None:
    """A bad image when the file's header declares more than ``max_pixels``: it is never decoded."""
    size = declared_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        raise BadImageError(f"{path}: declares {size[0]}x{size[1]} px, over the limit of {max_pixels:,} pixels "
                            "(datasets.<name>.max_pixels); not decoded")


def decode_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a file to an RGB uint8 array of shape (H, W, 3).

    Grayscale is replicated to three channels, an alpha channel is dropped,
    16-bit images are scaled to 8 bits, and the EXIF orientation is applied
    (OpenCV's ``IMREAD_COLOR`` does all of this). Reading the bytes ourselves
    keeps non-ASCII file names working on every platform.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise BadImageError(f"{path}: cannot read file ({err})") from err
    if data.size == 0:
        raise BadImageError(f"{path}: file is empty (0 bytes)")
    refuse_oversized(path, max_pixels)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as err:  # e.g. over OpenCV's own pixel limit
        raise BadImageError(f"{path}: OpenCV cannot decode it ({str(err).strip().splitlines()[-1]})") from None
    if image is None:
        raise BadImageError(f"{path}: not a decodable image (corrupt, truncated or not an image format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_mask(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a mask file to (H, W): nonzero (in any colour channel; alpha ignored) is object."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise BadImageError(f"{path}: cannot read mask file ({err})") from err
    refuse_oversized(path, max_pixels)
    try:
        mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as err:
        raise BadImageError(f"{path}: OpenCV cannot decode it ({str(err).strip().splitlines()[-1]})") from None
    if mask is None:
        raise BadImageError(f"{path}: not a decodable mask image (corrupt, truncated or not an image format)")
    return mask if mask.ndim == 2 else mask[:, :, :3].any(axis=2).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask resized to (size, size) uint8 0/1 by nearest neighbour (no new values)."""
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.shape == (size, size):
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Bring an in-memory array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) to RGB uint8."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise BadImageError(f"unsupported pixel type {image.dtype}; expected uint8 or uint16")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return image


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size): area averaging when shrinking, bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)
