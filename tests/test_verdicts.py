"""The confirmed / refuted / undecided rules of `texforce.experiments.verdicts`, on hand-made per-seed data."""

from __future__ import annotations

import pytest

from texforce.experiments.page import verdict_section
from texforce.experiments.plan import LOOK_LEVEL
from texforce.experiments.verdicts import (
    CONFIRMED,
    REFUTED,
    UNDECIDED,
    Contrast,
    beats_each,
    better_at_equal_gain,
    differ,
    keeps_gains,
    over_optimised,
    paired,
    raises,
)
from texforce.stats import Estimate, estimate, seeds_needed, std


def C(values, margin=None, name="a − b"):
    """A contrast with these per-seed differences (seeds 0, 1, …)."""
    return Contrast(name, dict(enumerate(values)), margin)


def images(seed_means, offsets=(-0.02, 0.0, 0.02)):
    """Per-image scores {seed: {(prompt, noise): score}}: three prompts around each seed's mean."""
    return {s: {(f"p{i}", 1000): m + o for i, o in enumerate(offsets)} for s, m in enumerate(seed_means)}


def compare(a: Estimate, b: Estimate) -> str:
    """The rule before issue #30: 'higher' / 'lower' when two separate 95% intervals do not overlap."""
    if a.low > b.high:
        return "higher"
    if a.high < b.low:
        return "lower"
    return "no clear difference"


def test_pairing_finds_a_difference_that_non_overlap_misses():
    """Arms whose seed means spread widely but move together: their separate intervals overlap, their per-seed
    difference is tight and clearly above 0."""
    first = [0.50, 0.60, 0.70, 0.55, 0.65]
    second = [0.45, 0.552, 0.648, 0.50, 0.601]
    assert compare(estimate(first), estimate(second)) == "no clear difference"
    contrast = paired(images(first), images(second), "first − second")
    assert contrast.per_seed == pytest.approx({s: a - b for s, (a, b) in enumerate(zip(first, second, strict=True))})
    assert contrast.interval.low > 0.04 and contrast.interval.level == 0.99
    assert raises("first raises", contrast).outcome == CONFIRMED


def test_against_base_every_seed_pairs_with_the_one_base_rendering():
    base = {("p0", 1000): 0.2, ("p1", 1000): 0.4}
    adapter = {0: {("p0", 1000): 0.5, ("p1", 1000): 0.5}, 1: {("p0", 1000): 0.3, ("p1", 1000): 0.6}}
    assert paired(adapter, base, "adapter − base").per_seed == pytest.approx({0: 0.2, 1: 0.15})
    with pytest.raises(ValueError, match="different images"):
        paired({0: {("p0", 1000): 0.5}}, base, "x")


def test_verdicts_only_at_a_look_of_the_plan():
    clear = [0.10, 0.11, 0.09, 0.10]  # 4 seeds: between the looks at 3 and 5
    verdict = raises("c", C(clear))
    assert verdict.outcome == UNDECIDED and "not a look" in verdict.reason
    assert "at 4 (cap not reached: budget)" in verdict.reason
    assert raises("c", C([*clear, 0.1])).outcome == CONFIRMED
    assert raises("c", C([-0.1, -0.11, -0.09])).outcome == REFUTED
    wide = raises("c", C([0.3, -0.2, 0.1] + [0.05] * 13))
    assert wide.outcome == UNDECIDED and "at 16 (cap)" in wide.reason


def test_equivalence_needs_the_whole_interval_inside_the_margin():
    tight = C([0.010, 0.012, 0.008, 0.011, 0.009], margin=0.05)
    assert tight.excludes_zero and tight.inside_margin()  # a real but small difference: equal within the margin
    assert differ("differ", [tight]).outcome == REFUTED
    wide = C([0.04, -0.03, 0.01], margin=0.05)
    assert not wide.inside_margin() and not wide.excludes_zero
    assert differ("differ", [wide]).outcome == UNDECIDED
    apart = C([0.20, 0.21, 0.19], margin=0.05)
    assert apart.outside_margin() and differ("differ", [wide, apart]).outcome == CONFIRMED


def test_beats_each_is_refuted_by_equality_or_by_a_loss():
    above = C([0.1, 0.11, 0.09], margin=0.04)
    assert beats_each("c", [above, above]).outcome == CONFIRMED
    equal = C([0.001, -0.001, 0.0005], margin=0.04)
    outcome = beats_each("c", [above, equal])
    assert outcome.outcome == REFUTED and "equal" in outcome.reason
    assert beats_each("c", [above, C([-0.1, -0.11, -0.09], margin=0.04)]).outcome == REFUTED
    assert beats_each("c", [above, C([0.2, -0.1, 0.05], margin=0.04)]).outcome == UNDECIDED


def test_better_at_equal_gain_judges_semantics_only_at_equal_gain():
    equal = C([0.001, -0.001, 0.0], margin=0.04)
    assert better_at_equal_gain("c", equal, C([0.1, 0.12, 0.11])).outcome == CONFIRMED
    assert better_at_equal_gain("c", equal, C([-0.1, -0.12, -0.11])).outcome == REFUTED
    assert better_at_equal_gain("c", equal, C([0.1, -0.12, 0.11])).outcome == UNDECIDED
    apart = better_at_equal_gain("c", C([0.2, 0.21, 0.19], margin=0.04), C([0.1, 0.12, 0.11]))
    assert apart.outcome == UNDECIDED and "not at equal gain" in apart.reason


def test_keeps_gains_is_non_inferiority_within_the_margin():
    gain = C([0.2, 0.21, 0.19])
    small_loss = C([-0.010, -0.012, -0.008], margin=0.05)  # loses a little, clearly less than the margin
    assert keeps_gains("c", [(gain, small_loss), (gain, small_loss)]).outcome == CONFIRMED
    big_loss = C([-0.100, -0.101, -0.099], margin=0.05)
    assert keeps_gains("c", [(gain, small_loss), (gain, big_loss)]).outcome == REFUTED
    unclear = C([0.1, -0.3, 0.05], margin=0.05)
    assert keeps_gains("c", [(gain, small_loss), (gain, unclear)]).outcome == UNDECIDED


def test_keeps_gains_counts_the_seeds_its_non_inferiority_needs():
    """A small loss shown unequal to 0 but reaching past −margin is undecided: the seeds it needs are those that
    would put the interval above −margin, not the (already reached) seeds that exclude 0."""
    gain = C([0.2, 0.21, 0.19, 0.2, 0.22, 0.18, 0.2, 0.21])
    loss = C([-0.03, -0.04, -0.035, -0.025, -0.045, -0.03, -0.04, -0.035], margin=0.04)
    assert loss.excludes_zero and not loss.not_below_margin() and loss.needed <= 8  # the two-sided count
    verdict = keeps_gains("c", [(gain, loss)])
    own = verdict.contrasts[1]
    assert verdict.outcome == UNDECIDED and own.noninferiority and own.needed > 8
    values = list(loss.per_seed.values())
    assert own.needed == seeds_needed(sum(values) / len(values) + 0.04, std(values), LOOK_LEVEL)
    assert verdict.needed == own.needed


def test_over_optimised():
    rose, fell = C([0.06, 0.065, 0.07]), C([-0.06, -0.065, -0.07])
    assert over_optimised("c", fell, None, None).outcome == CONFIRMED
    assert over_optimised("c", rose, None, None).outcome == REFUTED  # at this budget
    assert over_optimised("c", rose, fell, rose).outcome == CONFIRMED  # after its peak the judge falls
    assert over_optimised("c", C([0.1, -0.1, 0.0]), None, None).outcome == UNDECIDED


def test_section_lists_every_claim_its_contrasts_and_the_seeds_to_run_next():
    text = verdict_section([raises("text RL raises alignment", C([0.1, 0.3, -0.05], name="text − base"))])
    assert text.startswith("## Verdict\n")
    row = next(line for line in text.splitlines() if line.startswith("| text RL raises alignment |"))
    assert "**undecided**: at 3 (cap not reached: budget)" in row and row.endswith("| 3, 4 |")
    contrast = next(line for line in text.splitlines() if line.startswith("| text − base |"))
    assert contrast.startswith("| text − base | +0.1167 | [") and "| 3 | — |" in contrast
