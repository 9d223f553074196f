"""The intervals everything reports: a mean with a two-sided Student-t interval (95% unless asked), the plain-words
verdict a change earns from it, and what the paired claims add (issue #30): the variance components of a per-seed
difference and the seeds an interval needs to decide.

Paired over training seeds: every arm renders the same prompts from the same noises, so two arms are compared by the
per-seed difference of their means on the same images, and the training seed is the unit of the t-interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Two-sided 95% Student-t quantiles by degrees of freedom (n - 1) up to 30; beyond, the normal 1.96.
T_95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131]
T_95 += [2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


@dataclass(frozen=True)
class Estimate:
    """Mean of `n` values with the half-width `ci` of its two-sided Student-t interval at `level` (0 when n = 1)."""

    mean: float
    ci: float
    n: int
    level: float = 0.95

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


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta I_x(a, b), by the modified Lentz method."""
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(1000):
        m = i // 2
        if i == 0:
            term = 1.0
        elif i % 2 == 0:
            term = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            term = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + term * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + term / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return f - 1.0


def _beta_regularized(a: float, b: float, x: float) -> float:
    """I_x(a, b); the fraction converges fast below x = (a + 1) / (a + b + 2), the symmetry covers the rest."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _beta_regularized(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) / a * _beta_fraction(a, b, x)


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile: P(|T_df| <= q) = `level` (q = 4.303 for df 2 at 95%), by bisection on the
    t distribution's CDF, 1 - I_{df/(df+q²)}(df/2, 1/2) / 2."""
    if df < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"t quantile needs df >= 1 and 0 < level < 1, got df {df}, level {level}")
    low, high = 0.0, 1e6
    for _ in range(80):  # 1e6 / 2^80: far below any printed digit
        q = (low + high) / 2
        inside = 1.0 - _beta_regularized(df / 2, 0.5, df / (df + q * q))
        low, high = (q, high) if inside < level else (low, q)
    return (low + high) / 2


def estimate(values: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean ± two-sided t-interval at `level` of `values` (treated as independent draws)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values to estimate from")
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, 0.0, 1, level)
    table = T_95[n - 2] if n - 1 <= len(T_95) else 1.96  # the rounded table the pages have always used
    t = table if level == 0.95 else t_quantile(n - 1, level)
    return Estimate(mean, t * std(values) / math.sqrt(n), n, level)


def verdict(change: Estimate) -> str:
    """'rose' / 'fell' when the 95% interval of a change excludes 0, else 'no clear change'."""
    if change.low > 0:
        return "rose"
    if change.high < 0:
        return "fell"
    return "no clear change"


@dataclass(frozen=True)
class Components:
    """Variance components of one image's score difference between two arms, from a seeds × prompts layout with
    several evaluation noises per prompt (method of moments, crossed random effects): the training seed's, the
    prompt's, and the rest (the image: its noise, and how a seed fares on a prompt)."""

    seed: float
    prompt: float
    image: float
    num_prompts: int
    images_per_seed: int

    @property
    def seed_mean_variance(self) -> float:
        """Variance of one seed's mean difference over its images, prompts drawn anew."""
        return self.seed + self.prompt / self.num_prompts + self.image / self.images_per_seed

    def shares(self) -> dict[str, float]:
        """Each component's share of `seed_mean_variance`."""
        total = self.seed_mean_variance or 1.0
        return {
            "seed": self.seed / total,
            "prompt": self.prompt / self.num_prompts / total,
            "image": self.image / self.images_per_seed / total,
        }


def components(per_image: Mapping[int, Mapping[tuple[str, int], float]]) -> Components | None:
    """The `Components` of per-image differences {training seed: {(prompt, noise seed): difference}}, every seed on
    the same images; None for fewer than two seeds (no seed-to-seed spread to measure)."""
    seeds = sorted(per_image)
    if len(seeds) < 2:
        return None
    images = sorted(per_image[seeds[0]])
    if any(sorted(per_image[s]) != images for s in seeds):
        raise ValueError("every training seed must be judged on the same images to split the variance")
    prompts = sorted({p for p, _ in images})
    num_seeds, num_images = len(seeds), len(images)
    per_prompt = num_images / len(prompts)
    grand = sum(v for s in seeds for v in per_image[s].values()) / (num_seeds * num_images)
    seed_mean = {s: sum(per_image[s].values()) / num_images for s in seeds}
    prompt_sum: dict[str, float] = dict.fromkeys(prompts, 0.0)
    for s in seeds:
        for (p, _), v in per_image[s].items():
            prompt_sum[p] += v
    prompt_mean = {p: total / (num_seeds * per_prompt) for p, total in prompt_sum.items()}
    ms_seed = num_images * sum((m - grand) ** 2 for m in seed_mean.values()) / (num_seeds - 1)
    ms_prompt = num_seeds * per_prompt * sum((m - grand) ** 2 for m in prompt_mean.values()) / max(len(prompts) - 1, 1)
    residual = sum(
        (v - seed_mean[s] - prompt_mean[p] + grand) ** 2 for s in seeds for (p, _), v in per_image[s].items()
    )
    ms_image = residual / max(num_seeds * num_images - num_seeds - len(prompts) + 1, 1)
    return Components(
        seed=max(0.0, (ms_seed - ms_image) / num_images),
        prompt=max(0.0, (ms_prompt - ms_image) / (num_seeds * per_prompt)) if len(prompts) > 1 else 0.0,
        image=ms_image,
        num_prompts=len(prompts),
        images_per_seed=num_images,
    )


def seeds_needed(mean: float, sd: float, level: float, margin: float | None = None, limit: int = 999) -> int | None:
    """A precision calculation: the fewest seeds n whose t-interval at `level`, at the observed per-seed `sd`,
    would exclude 0 around the observed `mean` (half-width < |mean|) or, given `margin`, lie inside ±margin
    (|mean| + half-width < margin), whichever comes first; None beyond `limit`. At n the interval decides about half
    the time (the mean and spread stay as observed), not with 80% power."""
    for n in range(2, limit + 1):
        half = t_quantile(n - 1, level) * sd / math.sqrt(n)
        if half < abs(mean) or (margin is not None and abs(mean) + half < margin):
            return n
    return None
