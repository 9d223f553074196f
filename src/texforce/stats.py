"""The one confidence interval everything reports: a mean with a two-sided 95% Student-t interval, and the
plain-words verdict a change earns from it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% Student-t quantiles by degrees of freedom (n - 1) up to 30; beyond, the normal 1.96.
T_95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131]
T_95 += [2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


@dataclass(frozen=True)
class Estimate:
    """Mean of `n` values with the half-width `ci` of its two-sided 95% Student-t interval (0 when n = 1)."""

    mean: float
    ci: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci:.4f}" if self.n > 1 else f"{self.mean:.4f}"


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def estimate(values: Sequence[float]) -> Estimate:
    """Mean ± 95% t-interval of `values` (treated as independent draws)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values to estimate from")
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, 0.0, 1)
    t = T_95[n - 2] if n - 1 <= len(T_95) else 1.96
    return Estimate(mean, t * std(values) / math.sqrt(n), n)


def compare(a: Estimate, b: Estimate) -> str:
    """'higher' / 'lower' when the two 95% intervals do not overlap, else 'no clear difference'."""
    if a.low > b.high:
        return "higher"
    if a.high < b.low:
        return "lower"
    return "no clear difference"


def verdict(change: Estimate) -> str:
    """'rose' / 'fell' when the 95% interval of a change excludes 0, else 'no clear change'."""
    if change.low > 0:
        return "rose"
    if change.high < 0:
        return "fell"
    return "no clear change"
