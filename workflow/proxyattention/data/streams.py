"""The random streams of the workflow: every draw comes from a generator keyed by the job's
stream (a seed, or (seed, cycle)), a tag naming its purpose, and the draw's own coordinates.

A tag per purpose keeps two purposes from ever sharing a key: before tags, the epoch's shuffle
was keyed (seed, cycle, epoch, 7), which was also batch 7's crop-and-flip key.
"""

from __future__ import annotations

import numpy as np

# One tag per purpose; a key is (*stream, tag, *coordinates).
ORDER = 1  # the order of the original training images in an epoch
ADDED_ORDER = 2  # the order of the added images and where they fall among the originals
AUGMENT = 3  # crop offsets and flips of the original training images, per image and epoch
ADDED_AUGMENT = 4  # the same for the added images
MASK = 5  # mask_and_save's draws (random places, noise fills), per control
OCCLUSION = 6  # the patches an evaluation image loses, per prepared row (attention_measures.py)
SAMPLE = 7  # the fixed evaluation samples of the occlusion and map measures
FAITHFULNESS = 8  # the faithfulness sample, its drawn offsets, tie-breaking keys and fills, per (seed, cycle)
AGREEMENT = 9  # the sample of maps the agreement stage computes again, per (seed, cycle)
ERASE = 10  # the erasing arm's random erasing boxes, per image and epoch (random_erasing.py)


def stream_key(seed) -> tuple[int, ...]:
    """The random stream of a job: ``seed`` or a tuple such as (seed, cycle)."""
    return tuple(int(s) for s in seed) if isinstance(seed, (tuple, list)) else (int(seed),)


def generator(stream, tag: int, *coordinates: int) -> np.random.Generator:
    """The generator of one purpose (``tag``) at ``coordinates`` (an epoch, a control) of ``stream``."""
    return np.random.default_rng((*stream_key(stream), int(tag), *(int(c) for c in coordinates)))
