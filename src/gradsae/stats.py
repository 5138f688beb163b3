"""The statistics every report uses, in one place, from scipy: Wilson intervals of proportions and Student-t
intervals of means (95% unless asked otherwise)."""

from __future__ import annotations

import math
from typing import Sequence


def wilson_interval(k: float, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval (low, high), on a 0-1 scale, of k successes in n trials; None when n = 0.
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``."""
    from scipy.stats import binomtest

    if n < 1:
        return None
    ci = binomtest(int(round(k)), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1) of two or more values."""
    n = len(values)
    m = sum(values) / n
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval (low, high) of the mean of ``values``; None for fewer than two values.
    A constant sample gives the point (m, m)."""
    from scipy import stats

    if len(values) < 2:
        return None
    m, sd = mean_sd(values)
    if sd == 0:
        return m, m
    n = len(values)
    lo, hi = stats.t.interval(confidence, n - 1, loc=m, scale=sd / math.sqrt(n))
    return float(lo), float(hi)


def n_to_separate(values: Sequence[float], confidence: float = 0.95) -> int | None:
    """The smallest sample size at which the Student-t interval of the mean would exclude 0 if more values came
    with the mean and standard deviation of ``values`` (a planning figure, not a test); None when the mean is 0
    or fewer than two values give no spread."""
    from scipy import stats

    if len(values) < 2:
        return None
    m, sd = mean_sd(values)
    if m == 0:
        return None
    if sd == 0:
        return 2
    q = (1 + confidence) / 2
    size = max(2, math.floor((stats.norm.ppf(q) * sd / abs(m)) ** 2))  # the normal bound; t needs a little more
    while stats.t.ppf(q, size - 1) * sd / math.sqrt(size) >= abs(m):
        size += 1
    return size
