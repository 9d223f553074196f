"""The paired statistics of issue #30 (`texforce.stats`, `texforce.experiments.plan`): t quantiles, variance
components, the coverage of the chosen interval on data simulated from the measured components, the seeds an
interval needs, and the sequential plan with its error over several looks. Fixed RNG seeds, numpy only: fast."""

from __future__ import annotations

import math

import numpy as np
import pytest

from texforce.experiments.plan import CAP, LOOK_LEVEL, STEPS, next_look, next_seeds, undecided_at
from texforce.stats import T_95, components, estimate, seeds_needed, std, t_quantile

# What a 64-image seed mean's variance is made of in the committed results (stacked − text, stacked − U-Net: the
# training seed 50–60%): seed 60%, prompts 10%, the rest 30%, on 32 prompts × 2 noises.
PROMPTS, NOISES = 32, 2
SEED, PROMPT, IMAGE = 0.6, 0.1 * PROMPTS, 0.3 * PROMPTS * NOISES  # variances of one image's difference


def simulate(rng, sims, seeds, mu=0.0):
    """Per-image differences (sims, seeds, prompts, noises) from the components, prompts drawn anew each time."""
    a = rng.normal(0, math.sqrt(SEED), (sims, seeds, 1, 1))
    b = rng.normal(0, math.sqrt(PROMPT), (sims, 1, PROMPTS, 1))
    e = rng.normal(0, math.sqrt(IMAGE), (sims, seeds, PROMPTS, NOISES))
    return mu + a + b + e


def test_t_quantile_matches_the_table_and_the_99_percent_level():
    assert [round(t_quantile(df), 3) for df in range(1, 31)] == pytest.approx(T_95, abs=1.5e-3)
    assert t_quantile(2, 0.99) == pytest.approx(9.925, abs=1e-3) and t_quantile(15, 0.99) == pytest.approx(
        2.947, abs=1e-3
    )
    e = estimate([1.0, 2.0, 3.0], 0.99)
    assert e.ci == pytest.approx(9.925 / math.sqrt(3), abs=1e-3) and e.level == 0.99


def test_components_recover_the_simulated_shares():
    scores = simulate(np.random.default_rng(0), 1, 40)[0]
    per_image = {s: {(f"p{p}", n): scores[s, p, n] for p in range(PROMPTS) for n in range(NOISES)} for s in range(40)}
    found = components(per_image)
    assert found.num_prompts == PROMPTS and found.images_per_seed == PROMPTS * NOISES
    # the image part has 2,500 degrees of freedom, the seed part 39 and the prompt part 31: tolerances to match
    assert found.image == pytest.approx(IMAGE, rel=0.05)
    assert found.seed == pytest.approx(SEED, rel=0.4) and found.prompt == pytest.approx(PROMPT, rel=0.6)
    assert sum(found.shares().values()) == pytest.approx(1.0)
    assert components({0: per_image[0]}) is None  # one seed: no spread between seeds to measure


def test_the_per_seed_interval_covers_and_pooling_images_does_not():
    """Simulated from the measured components: the t-interval over 3 training seeds covers the true difference at
    least 90% of the time (nominal 95%); treating the 192 images as independent covers far less."""
    rng, sims, seeds = np.random.default_rng(1), 2000, 3
    scores = simulate(rng, sims, seeds, mu=0.05)
    means = scores.mean(axis=(2, 3))  # (sims, seeds)
    half = T_95[seeds - 2] * means.std(axis=1, ddof=1) / math.sqrt(seeds)
    covered = np.abs(means.mean(axis=1) - 0.05) <= half
    assert covered.mean() >= 0.90
    flat = scores.reshape(sims, -1)
    pooled = 1.96 * flat.std(axis=1, ddof=1) / math.sqrt(flat.shape[1])
    assert (np.abs(flat.mean(axis=1) - 0.05) <= pooled).mean() < 0.85


def _false_decisions(level, sims=4000):
    """How often the plan's looks call a 0 difference non-zero at some look, per-look interval at `level`."""
    rng = np.random.default_rng(2)
    draws = rng.normal(0, 1, (sims, CAP))
    decided = np.zeros(sims, dtype=bool)
    for n in STEPS:
        x = draws[:, :n]
        half = t_quantile(n - 1, level) * x.std(axis=1, ddof=1) / math.sqrt(n)
        decided |= np.abs(x.mean(axis=1)) > half
    return decided.mean()


def test_the_plans_looks_keep_a_false_decision_under_five_percent():
    assert abs(LOOK_LEVEL - 0.99) < 1e-12
    assert _false_decisions(LOOK_LEVEL) <= 0.05
    assert _false_decisions(0.95) > 0.07  # five looks at 95% each would not


def test_seeds_needed_is_the_first_count_whose_interval_decides():
    mean, sd = 0.05, 0.05
    n = seeds_needed(mean, sd, 0.99)
    assert t_quantile(n - 1, 0.99) * sd / math.sqrt(n) < mean <= t_quantile(n - 2, 0.99) * sd / math.sqrt(n - 1)
    # equivalence comes first when the difference is small against the margin
    assert seeds_needed(0.01, 0.05, 0.99, margin=0.1) < 10
    assert seeds_needed(0.01, 0.05, 0.99) > 100
    assert seeds_needed(0.0, 1.0, 0.99, limit=50) is None
    assert std([1.0, 3.0]) == pytest.approx(math.sqrt(2))


def test_next_seeds_follows_the_steps_to_the_cap():
    assert STEPS == (3, 5, 8, 12, 16) and next_look(3) == 5 and next_look(16) is None
    assert next_seeds([0, 1, 2], decided=False) == [3, 4]
    assert next_seeds([0, 1, 2], decided=True) == []
    assert next_seeds([0, 1, 2, 3], decided=False) == [4]  # a run stopped between looks finishes the step
    assert next_seeds([0, 2, 5], decided=False) == [1, 3]  # the lowest seeds not yet run
    assert next_seeds(list(range(12)), decided=False) == [12, 13, 14, 15]
    assert next_seeds(list(range(16)), decided=False) == []
    assert undecided_at(16) == "at 16 (cap)" and undecided_at(5) == "at 5 (cap not reached: budget)"
