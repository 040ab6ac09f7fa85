"""Mask-and-save: the vectorised erasing (data.erasing) against its anchor, a per-image OpenCV loop;
outputs compared.
"""

from __future__ import annotations

import numpy as np

from measure import median_times

# 4. mask-and-save ----------------------------------------------------------------------------


def erase_one(image: np.ndarray, cam: np.ndarray, value: float) -> np.ndarray:
    """The per-image anchor: the quantile, an OpenCV threshold of one map, a black fill."""
    import cv2

    _, mask = cv2.threshold(cam, float(np.quantile(cam, value)), 1, cv2.THRESH_BINARY)
    out = image.copy()
    out[mask > 0] = 0
    return out


def bench_masking(n_images: int, size: int, repeats: int) -> dict:
    from proxyattention.data.erasing import erase, threshold_masks

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    maps = rng.random((n_images, size, size), dtype=np.float32)

    def vectorised():
        masks, _ = threshold_masks(maps, "quantile", 0.9)
        return erase(images, maps, masks, {"mode": "black"}, rng)

    def loop():
        return np.stack([erase_one(images[i], maps[i], 0.9) for i in range(n_images)])

    equal = bool((vectorised() == loop()).all())
    t_vec, t_loop = median_times([vectorised, loop], repeats)
    return {"images": n_images, "size": size, "vectorised_img_s": n_images / t_vec,
            "per_image_loop_img_s": n_images / t_loop, "ratio": t_loop / t_vec, "identical_output": equal}
