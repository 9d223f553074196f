"""The confirmed / refuted / inconclusive rules of `texforce.experiments.verdicts`, on hand-made intervals."""

from __future__ import annotations

from texforce.experiments.page import verdict_section
from texforce.experiments.verdicts import (
    CONFIRMED,
    INCONCLUSIVE,
    REFUTED,
    beats_each,
    better_at_equal_gain,
    differ,
    keeps_gains,
    over_optimised,
    raises,
)
from texforce.stats import Estimate


def E(mean, ci=0.0, n=3):
    """An estimate: mean ± ci over n seeds."""
    return Estimate(mean, ci, n)


def test_raises_needs_the_interval_apart():
    assert raises("c", E(0.5, 0.1), E(0.3, 0, 1), "").outcome == CONFIRMED
    assert raises("c", E(0.35, 0.1), E(0.3, 0, 1), "").outcome == INCONCLUSIVE
    assert raises("c", E(0.1, 0.1), E(0.3, 0, 1), "").outcome == REFUTED


def test_beats_each():
    assert beats_each("c", E(0.8, 0.05), [E(0.5, 0.05), E(0.6, 0.05)], "").outcome == CONFIRMED
    assert beats_each("c", E(0.62, 0.05), [E(0.5, 0.05), E(0.6, 0.05)], "").outcome == INCONCLUSIVE
    assert beats_each("c", E(0.4, 0.05), [E(0.5, 0.01), E(0.6, 0.05)], "").outcome == REFUTED


def test_better_at_equal_gain_only_judges_equal_gains():
    equal, apart = (E(0.5, 0.05), E(0.52, 0.05)), (E(0.5, 0.01), E(0.8, 0.01))
    assert better_at_equal_gain("c", equal, (E(0.1, 0.02), E(-0.1, 0.02)), "").outcome == CONFIRMED
    assert better_at_equal_gain("c", equal, (E(-0.1, 0.02), E(0.1, 0.02)), "").outcome == REFUTED
    assert better_at_equal_gain("c", equal, (E(0.1, 0.2), E(0.0, 0.2)), "").outcome == INCONCLUSIVE
    unequal = better_at_equal_gain("c", apart, (E(0.1, 0.02), E(-0.1, 0.02)), "")
    assert unequal.outcome == INCONCLUSIVE and "not at equal gain" in unequal.reason


def test_keeps_gains():
    base = E(0.3, 0, 1)
    kept = [(E(0.5, 0.05), E(0.52, 0.05), base), (E(0.45, 0.05), E(0.5, 0.05), base)]
    assert keeps_gains("c", kept, "").outcome == CONFIRMED
    lost = [(E(0.5, 0.05), E(0.52, 0.05), base), (E(0.35, 0.01), E(0.5, 0.01), base)]
    assert keeps_gains("c", lost, "").outcome == REFUTED
    unclear = [(E(0.5, 0.05), E(0.52, 0.05), base), (E(0.35, 0.1), E(0.4, 0.1), base)]
    assert keeps_gains("c", unclear, "").outcome == INCONCLUSIVE


def test_differ_is_refuted_only_within_the_equivalence_margin():
    assert differ("c", [(E(0.3, 0.01), E(0.1, 0.01))], "").outcome == CONFIRMED
    # difference 0.01, half-width hypot(0.02, 0.02) = 0.028: 0.038 <= 0.25 × 0.3
    assert differ("c", [(E(0.3, 0.02), E(0.29, 0.02))], "").outcome == REFUTED
    # overlapping but wide: 0.01 + hypot(0.1, 0.1) > 0.075
    assert differ("c", [(E(0.3, 0.1), E(0.29, 0.1))], "").outcome == INCONCLUSIVE
    # one pair apart is enough
    assert differ("c", [(E(0.3, 0.02), E(0.29, 0.02)), (E(0.5, 0.01), E(0.2, 0.01))], "").outcome == CONFIRMED


def test_over_optimised():
    proxy = [E(0.3, 0.01), E(0.5, 0.01), E(0.7, 0.01)]
    heldout_up = (E(0.5, 0.05), E(0.3, 0, 1))
    judge_falls = [E(0.3, 0.01), E(0.6, 0.01), E(0.4, 0.01)]
    assert over_optimised("c", proxy, judge_falls, heldout_up, "").outcome == CONFIRMED
    judge_follows = [E(0.3, 0.01), E(0.5, 0.01), E(0.6, 0.01)]
    assert over_optimised("c", proxy, judge_follows, heldout_up, "").outcome == INCONCLUSIVE
    assert over_optimised("c", proxy, judge_follows, (E(0.1, 0.05), E(0.3, 0, 1)), "").outcome == CONFIRMED


def test_section_lists_every_claim_with_its_verdict():
    text = verdict_section([raises("text RL raises alignment", E(0.5, 0.1), E(0.3, 0, 1), "0.3 → 0.5")])
    assert text.startswith("## Verdict\n")
    assert "| text RL raises alignment | 0.3 → 0.5 | **confirmed**: the interval lies above the comparison |" in text
