"""The verdict a paper claim earns from measured intervals: confirmed, refuted or inconclusive.

One rule per kind of claim, each built on `stats.compare` (two 95% intervals that do not overlap): a claim is
confirmed when the intervals show it, refuted when they show the opposite, and inconclusive when they overlap. A
claim that two things differ is refuted only by an equivalence bound (`EQUIVALENCE`), never by overlap alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from texforce.stats import Estimate, compare

CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive"
# Two measurements count as the same when their difference's 95% interval lies within ± this fraction of the larger
# one's size: the margin an "X and Y differ" claim must clear to be refuted rather than left inconclusive.
EQUIVALENCE = 0.25


@dataclass(frozen=True)
class Verdict:
    """One claim of the paper, what was measured for it, and the verdict with the reason in plain words."""

    claim: str
    evidence: str
    outcome: str  # CONFIRMED, REFUTED or INCONCLUSIVE
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _directed(a: Estimate, b: Estimate) -> str:
    """CONFIRMED when `a`'s interval lies above `b`'s, REFUTED when below, else INCONCLUSIVE."""
    return {"higher": CONFIRMED, "lower": REFUTED}.get(compare(a, b), INCONCLUSIVE)


def raises(claim: str, after: Estimate, before: Estimate, evidence: str) -> Verdict:
    """Claim `after` > `before`: confirmed when its interval is above, refuted when below."""
    outcome = _directed(after, before)
    reason = {
        CONFIRMED: "the interval lies above the comparison",
        REFUTED: "the interval lies below the comparison",
        INCONCLUSIVE: "the intervals overlap",
    }[outcome]
    return Verdict(claim, evidence, outcome, reason)


def beats_each(claim: str, combined: Estimate, singles: Sequence[Estimate], evidence: str) -> Verdict:
    """Claim `combined` beats each of `singles`: confirmed when above every one, refuted when below the best."""
    best = max(singles, key=lambda e: e.mean)
    if all(compare(combined, s) == "higher" for s in singles):
        return Verdict(claim, evidence, CONFIRMED, "above every single one, intervals apart")
    if compare(combined, best) == "lower":
        return Verdict(claim, evidence, REFUTED, "below the better single one, intervals apart")
    return Verdict(claim, evidence, INCONCLUSIVE, "not clearly above the better single one (intervals overlap)")


def better_at_equal_gain(
    claim: str, gains: tuple[Estimate, Estimate], kept: tuple[Estimate, Estimate], evidence: str
) -> Verdict:
    """Claim A keeps more than B at equal gain: judged only when the `gains` (A, B) do not differ; `kept` decides."""
    if compare(*gains) != "no clear difference":
        return Verdict(claim, evidence, INCONCLUSIVE, "the two gains differ, so they are not at equal gain")
    outcome = _directed(*kept)
    reason = {
        CONFIRMED: "at equal gain (intervals overlap), the first keeps more, intervals apart",
        REFUTED: "at equal gain (intervals overlap), the first keeps less, intervals apart",
        INCONCLUSIVE: "at equal gain (intervals overlap), what each keeps is within the other's interval",
    }[outcome]
    return Verdict(claim, evidence, outcome, reason)


def keeps_gains(claim: str, tasks: Sequence[tuple[Estimate, Estimate, Estimate]], evidence: str) -> Verdict:
    """Claim the combined adapter keeps every task's gain, per task (combined, the task's own adapter, base): refuted
    when it is clearly below a task's own adapter, confirmed when it is clearly above base and not clearly below
    the task's adapter on every task."""
    if any(compare(combined, own) == "lower" for combined, own, _ in tasks):
        return Verdict(claim, evidence, REFUTED, "below a task's own adapter, intervals apart: part of a gain lost")
    if all(compare(combined, base) == "higher" for combined, _, base in tasks):
        return Verdict(claim, evidence, CONFIRMED, "above base on every task and never below a task's own adapter")
    return Verdict(claim, evidence, INCONCLUSIVE, "not clearly above base on every task (intervals overlap)")


def differ(claim: str, pairs: Sequence[tuple[Estimate, Estimate]], evidence: str) -> Verdict:
    """Claim A and B differ, on several measurements (A, B): confirmed when one pair's intervals are apart,
    refuted when every pair is equivalent (the difference's interval within ± `EQUIVALENCE` of the larger size),
    else inconclusive."""
    if any(compare(a, b) != "no clear difference" for a, b in pairs):
        return Verdict(claim, evidence, CONFIRMED, "a pair's intervals are apart")
    if all(_equivalent(a, b) for a, b in pairs):
        return Verdict(
            claim, evidence, REFUTED, f"every difference lies within ±{EQUIVALENCE:.0%} of the size measured"
        )
    return Verdict(claim, evidence, INCONCLUSIVE, "the intervals overlap but are too wide to call them equal")


def _equivalent(a: Estimate, b: Estimate) -> bool:
    """The 95% interval of `a - b` (half-widths combined in quadrature) lies within ± EQUIVALENCE · max(|a|, |b|)."""
    half_width = math.hypot(a.ci, b.ci)
    return abs(a.mean - b.mean) + half_width <= EQUIVALENCE * max(abs(a.mean), abs(b.mean))


def over_optimised(
    claim: str, proxy: Sequence[Estimate], judge: Sequence[Estimate], heldout: tuple[Estimate, Estimate], evidence: str
) -> Verdict:
    """Claim optimising the learned reward (`proxy`, per epoch) loses the exact one (`judge`): confirmed when after the
    judge's peak epoch it falls (intervals apart) while the proxy does not, or when held-out (after, base) the judge
    ends clearly below base. A finite run cannot refute it: otherwise inconclusive."""
    peak = max(range(len(judge)), key=lambda e: judge[e].mean)
    falls = compare(judge[-1], judge[peak]) == "lower" and compare(proxy[-1], proxy[peak]) != "lower"
    if falls:
        return Verdict(claim, evidence, CONFIRMED, f"after epoch {peak + 1} the exact judge falls, intervals apart")
    if compare(*heldout) == "lower":
        return Verdict(claim, evidence, CONFIRMED, "held-out, the exact judge ends below base, intervals apart")
    return Verdict(claim, evidence, INCONCLUSIVE, "not observed at this budget: the exact judge never clearly fell")


def signed(e: Estimate) -> str:
    """A change with its sign: `+0.1714 ± 0.0231`."""
    return f"{e.mean:+.4f} ± {e.ci:.4f}" if e.n > 1 else f"{e.mean:+.4f}"
