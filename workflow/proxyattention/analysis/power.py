"""What a paired comparison over seeds could have detected: the minimum detectable effect (MDE)
at 80% power for a two-sided 5% paired t-test, the seed pairs an effect of interest needs, and
Holm's adjustment for the many comparisons of one table.

Power comes from the noncentral t distribution (scipy.stats.nct): with n pairs whose
differences have standard deviation s, a true mean difference d gives the test statistic a
noncentral t with n - 1 degrees of freedom and noncentrality d * sqrt(n) / s.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA, POWER = 0.05, 0.80
# Differences equal up to float rounding (accuracy moves in steps of 1/n) have a spread of
# ~1e-17: that is no spread, and the MDE is undefined (aggregate.MIN_WIDTH says the same).
MIN_SD = 1e-9
MAX_PAIRS = 100_000  # past this, "pairs needed" is reported as more than it


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Probability that a two-sided paired t-test at ``alpha`` over ``n`` pairs rejects when the
    true mean difference is ``effect`` and the differences' standard deviation is ``sd``."""
    from scipy import stats

    if n < 2 or not sd > 0:
        return math.nan
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n) / sd
    value = stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc)
    if np.isfinite(value):
        return float(value)
    # scipy's nct gives NaN far in the tail (few pairs, a large noncentrality): integrate over the
    # chi-square of the denominator instead, T = (Z + nc) / sqrt(V / df)
    from scipy import integrate

    def tails(v: float) -> float:
        scale = critical * math.sqrt(v / df)
        return (stats.norm.sf(scale - nc) + stats.norm.cdf(-scale - nc)) * stats.chi2.pdf(v, df)

    value, _ = integrate.quad(tails, 0, np.inf, limit=200)
    return float(min(max(value, 0.0), 1.0))


def mde(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest true mean difference detected with probability ``target``: NaN without a
    positive spread or with fewer than two pairs (undefined, never 0)."""
    from scipy import optimize

    if n < 2 or not (np.isfinite(sd) and sd > MIN_SD):
        return math.nan
    high = sd
    while power(high, sd, n, alpha) < target:
        high *= 2
    return float(optimize.brentq(lambda d: power(d, sd, n, alpha) - target, 0.0, high, xtol=1e-12 * sd))


def pairs_needed(effect: float, sd: float, alpha: float = ALPHA, target: float = POWER) -> float:
    """Fewest seed pairs whose test detects ``effect`` with probability ``target``, for
    differences of standard deviation ``sd``; NaN without a spread, inf past MAX_PAIRS."""
    if not (np.isfinite(sd) and sd > MIN_SD) or not effect > 0:
        return math.nan
    low, high = 2, 2
    while power(effect, sd, high, alpha) < target:
        low, high = high, high * 2
        if high > MAX_PAIRS:
            return math.inf
    while low < high:  # power rises with n: the first n that reaches the target
        mid = (low + high) // 2
        if power(effect, sd, mid, alpha) >= target:
            high = mid
        else:
            low = mid + 1
    return float(high)


def paired_p_value(differences) -> float:
    """Two-sided p of the paired t-test (one-sample t on the differences); NaN with fewer than two
    pairs or no spread."""
    from scipy import stats

    x = np.asarray([d for d in differences if np.isfinite(d)], dtype=np.float64)
    if len(x) < 2 or not x.std(ddof=1) > MIN_SD:
        return math.nan
    return float(stats.ttest_1samp(x, 0.0).pvalue)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and the t-interval's half width over seeds (NaN with fewer than two values)."""
    from scipy import stats

    x = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    if n < 2:
        return float(x.mean()), np.nan, np.nan, n
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half), n
