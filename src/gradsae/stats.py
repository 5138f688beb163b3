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


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval (low, high) of the mean of ``values``; None for fewer than two values.
    A constant sample gives the point (m, m)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    if sd == 0:
        return m, m
    lo, hi = stats.t.interval(confidence, n - 1, loc=m, scale=sd / math.sqrt(n))
    return float(lo), float(hi)
