"""A second interval beside the t-interval, from every evaluation image: a two-level paired
bootstrap that resamples seeds and, within each, images, so the interval also carries the
uncertainty of a finite test set (which the t-interval over seeds leaves out).

For one seed pair the per-image difference of correctness takes three values (+1: only the arm
is right, 0: both or neither, -1: only the control is); resampling N images with replacement is
then one multinomial draw of how many of each, which keeps 10,000 resamples cheap.

``python -m proxyattention.analysis.bootstrap`` measures both intervals' coverage on simulated runs
whose true difference is known (the numbers in the README).
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 2000
SEED = 20221130  # fixed: the same files give the same interval


def outcome_shares(correct_arm: np.ndarray, correct_control: np.ndarray) -> np.ndarray:
    """(3,) shares of images where only the arm is right, both agree in correctness, only the
    control is right."""
    a, b = np.asarray(correct_arm, bool), np.asarray(correct_control, bool)
    n = len(a)
    return np.array([(a & ~b).sum(), (a == b).sum(), (~a & b).sum()], dtype=np.float64) / max(n, 1)


def paired_bootstrap(shares: np.ndarray, n_images: int, resamples: int = RESAMPLES, seed: int = SEED,
                     confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean paired difference in accuracy: each resample draws the
    seed pairs with replacement, then each pair's ``n_images`` images with replacement.
    ``shares``: (pairs, 3) from outcome_shares. NaN with fewer than two pairs."""
    shares = np.asarray(shares, dtype=np.float64)
    if len(shares) < 2 or n_images < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(shares), size=(resamples, len(shares)))
    counts = rng.multinomial(n_images, shares[chosen])  # (resamples, pairs, 3)
    means = ((counts[..., 0] - counts[..., 2]) / n_images).mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def disagreement(prediction_arm: np.ndarray, prediction_control: np.ndarray) -> float:
    """Share of evaluation images on which the two arms predict different classes."""
    a, b = np.asarray(prediction_arm), np.asarray(prediction_control)
    return float((a != b).mean()) if len(a) else math.nan


def simulate(n_seeds: int, n_images: int, effect: float, rng: np.random.Generator,
             seed_sd: float = 0.01, image_sd: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One simulated comparison whose true difference (over the population of images) is
    ``effect``: a test set of images with difficulties in [0.2, 0.8], the arm's effect on each
    image drawn once around ``effect`` (sd ``image_sd``: 0 makes it the same on every image), and
    per seed each arm's correctness drawn per image with the arm's seed effect (sd ``seed_sd``).
    Returns per-seed accuracy differences and outcome shares."""
    p = rng.uniform(0.2, 0.8, n_images)
    lift = np.clip(effect + rng.normal(0, image_sd, n_images), -0.19, 0.19) if image_sd else np.full(n_images, effect)
    diffs, shares = [], []
    for _ in range(n_seeds):
        arm = rng.random(n_images) < p + lift + rng.normal(0, seed_sd)
        control = rng.random(n_images) < p + rng.normal(0, seed_sd)
        diffs.append(arm.mean() - control.mean())
        shares.append(outcome_shares(arm, control))
    return np.array(diffs), np.array(shares)


def coverage(n_seeds: int, experiments: int = 400, n_images: int = 500, effect: float = 0.01,
             seed: int = 0, resamples: int = 1000, image_sd: float = 0.0) -> dict:
    """Share of simulated experiments whose 95% t-interval, and whose bootstrap interval,
    contain the true difference."""
    from .power import mean_ci

    rng = np.random.default_rng(seed)
    t_hits = boot_hits = 0
    for k in range(experiments):
        diffs, shares = simulate(n_seeds, n_images, effect, rng, image_sd=image_sd)
        _, low, high, _ = mean_ci(diffs)
        t_hits += low <= effect <= high
        b_low, b_high = paired_bootstrap(shares, n_images, resamples, seed=k)
        boot_hits += b_low <= effect <= b_high
    return {"seeds": n_seeds, "image_sd": image_sd, "experiments": experiments, "t_coverage": t_hits / experiments,
            "bootstrap_coverage": boot_hits / experiments}


if __name__ == "__main__":
    for image_sd in (0.0, 0.1):
        for n in (3, 5, 8):
            print(coverage(n, image_sd=image_sd))
