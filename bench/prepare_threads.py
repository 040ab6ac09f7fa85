"""Prepare: decoding with the rule's threads against its anchor, one thread."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from measure import median_times


def bench_prepare(n_images: int, size: int, source_size: int, threads: int, repeats: int) -> dict:
    """The prepare stage on an ImageFolder tree of JPEGs with 1 thread vs ``threads`` threads
    (OpenCV releases the GIL while it decodes and resizes); the arrays must be identical."""
    import cv2
    from skimage import data

    from proxyattention.stages.prepare import prepare

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        for i in range(n_images):
            folder = tree / f"class{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            photo = cv2.resize(photos[i % len(photos)], (source_size, source_size))
            photo = np.roll(photo, i, axis=1)  # no two files alike
            cv2.imwrite(str(folder / f"{i}.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        spec = {"source": "imagefolder", "path": str(tree), "image_size": size, "val_fraction": 0.2,
                "split_seed": 0, "on_bad_image": "fail"}

        def run(n_threads: int):
            out = Path(tmp) / f"threads{n_threads}"
            out.mkdir(exist_ok=True)
            return lambda: prepare(spec, out / "images.npy", out / "index.csv", out / "classes.json",
                                   out / "skipped.csv", threads=n_threads)

        t_one, t_many = median_times([run(1), run(threads)], repeats)
        identical = np.array_equal(np.load(Path(tmp) / "threads1" / "images.npy"),
                                   np.load(Path(tmp) / f"threads{threads}" / "images.npy"))
    return {"images": n_images, "source": f"{source_size}px JPEG", "size": size, "threads": threads,
            "one_thread_img_s": n_images / t_one, "n_threads_img_s": n_images / t_many, "ratio": t_one / t_many,
            "identical_output": identical}
