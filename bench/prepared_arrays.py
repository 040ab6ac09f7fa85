"""Data: reading the prepared uint8 array against its anchor, decoding the source JPEGs each epoch."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from measure import median_times

# 3. data -------------------------------------------------------------------------------------


def bench_data(n_images: int, size: int, repeats: int, source_size: int = 512) -> dict:
    """One epoch of training batches from the prepared array vs decoding and resizing the
    source JPEGs each epoch; both then augment and normalise with the same functions."""
    import cv2
    from skimage import data

    from proxyattention.data.batches import (
        ArraySource,
        augment,
        draw_plan,
        make_loader,
        normalise,
    )
    from proxyattention.data.images import decode_image, resize

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(n_images):
            photo = cv2.resize(photos[i % len(photos)], (source_size, source_size))
            path = Path(tmp) / f"{i}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            files.append(path)
        prepared = np.stack([resize(decode_image(f), size) for f in files])
        np.save(Path(tmp) / "images.npy", prepared)
        mapped = np.load(Path(tmp) / "images.npy", mmap_mode="r")
        source = ArraySource([(mapped, np.arange(n_images), np.zeros(n_images))])
        mean = std = (0.5, 0.5, 0.5)
        loader, _ = make_loader(source, mean, std, 64, train=True, hflip=True, crop_padding=4)

        def from_array():
            for _ in loader:
                pass

        def from_files():
            for start in range(0, n_images, 64):
                batch = np.stack([resize(decode_image(f), size) for f in files[start : start + 64]])
                normalise(augment(batch, draw_plan(rng, len(batch), True, 4), 4), mean, std)

        t_array, t_files = median_times([from_array, from_files], repeats)
    return {"images": n_images, "source": f"{source_size}px JPEG", "size": size, "prepared_img_s": n_images / t_array,
            "decode_each_epoch_img_s": n_images / t_files, "ratio": t_files / t_array}
