"""The verdict a paper claim earns from paired differences: confirmed, refuted, or undecided at N seeds.

Every arm renders the same prompts from the same noises, so a claim is judged on `Contrast`s: per training seed, the
difference of two arms' means on the same images (against the base model, which has no seed, the adapter's seed
mean minus base's on the same images). Each contrast gets a t-interval over training seeds at the sequential plan's
per-look level (`plan.LOOK_LEVEL`, 99%) and answers one of three questions: does the interval exclude 0 (a
difference), lie inside ±margin (equal within the margin: an equivalence test), or lie above −margin (nothing lost
beyond the margin: non-inferiority)? The margin is 25% (`EQUIVALENCE`) of the gain the claim is about, stated on
the page. A verdict is given only at a look of the plan (3, 5, 8, 12, 16 seeds); otherwise the claim is undecided.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from texforce.experiments.plan import LOOK_LEVEL, STEPS, undecided_at
from texforce.stats import Components, Estimate, components, estimate, seeds_needed, std

CONFIRMED, REFUTED, UNDECIDED = "confirmed", "refuted", "undecided"
EQUIVALENCE = 0.25  # the margin, as a fraction of the gain a claim is about


@dataclass(frozen=True)
class Contrast:
    """One paired difference: its mean per training seed, the margin its rule uses (if any), and the variance
    components of its per-image differences (None with one seed)."""

    name: str
    per_seed: Mapping[int, float]
    margin: float | None = None
    components: Components | None = None
    noninferiority: bool = False  # decided by where the interval lies against −margin alone (`keeps_gains`)

    @property
    def interval(self) -> Estimate:
        return estimate(list(self.per_seed.values()), LOOK_LEVEL)

    @property
    def excludes_zero(self) -> bool:
        return self.interval.n > 1 and (self.interval.low > 0 or self.interval.high < 0)

    def above(self) -> bool:
        return self.interval.n > 1 and self.interval.low > 0

    def below(self) -> bool:
        return self.interval.n > 1 and self.interval.high < 0

    def inside_margin(self) -> bool:
        """Equal within the margin: the whole interval inside ±margin."""
        e = self.interval
        return self.margin is not None and e.n > 1 and -self.margin < e.low and e.high < self.margin

    def outside_margin(self) -> bool:
        """Shown to differ by more than the margin: the whole interval beyond +margin or beyond −margin."""
        e = self.interval
        return self.margin is not None and e.n > 1 and (e.low > self.margin or e.high < -self.margin)

    def not_below_margin(self) -> bool:
        """Non-inferior: the interval lies above −margin (less than the margin lost)."""
        return self.margin is not None and self.interval.n > 1 and self.interval.low > -self.margin

    def below_margin(self) -> bool:
        return self.margin is not None and self.interval.n > 1 and self.interval.high < -self.margin

    @property
    def needed(self) -> int | None:
        """Seeds for this contrast's interval to decide at the observed difference and spread (`seeds_needed`): to
        exclude 0 or lie inside ±margin; for a non-inferiority contrast, to lie wholly above or below −margin."""
        values = list(self.per_seed.values())
        if len(values) < 2:
            return None
        mean, sd = sum(values) / len(values), std(values)
        if self.noninferiority and self.margin is not None:
            return seeds_needed(mean + self.margin, sd, LOOK_LEVEL)
        return seeds_needed(mean, sd, LOOK_LEVEL, self.margin)

    def __str__(self) -> str:
        e = self.interval
        shown = f"{self.name} {e.mean:+.4f}"
        return shown + (f" [{e.low:+.4f}, {e.high:+.4f}]" if e.n > 1 else "")

    def as_dict(self) -> dict:
        e, c = self.interval, self.components
        return {
            "contrast": self.name,
            "difference": round(e.mean, 6),
            "low": round(e.low, 6),
            "high": round(e.high, 6),
            "level": round(e.level, 4),
            "seeds": e.n,
            "per_seed": {str(s): round(v, 6) for s, v in sorted(self.per_seed.items())},
            "margin": None if self.margin is None else round(self.margin, 6),
            "shares": None if c is None else {k: round(v, 4) for k, v in c.shares().items()},
            "needed": self.needed,
        }


@dataclass(frozen=True)
class Verdict:
    """One claim of the paper, the contrasts that decide it, and the verdict with the reason in plain words."""

    claim: str
    evidence: str
    outcome: str  # CONFIRMED, REFUTED or UNDECIDED
    reason: str
    contrasts: tuple[Contrast, ...] = field(default=())

    @property
    def seeds(self) -> int:
        return min((c.interval.n for c in self.contrasts), default=0)

    @property
    def needed(self) -> int | None:
        """The seeds every contrast needs to decide (the largest of theirs); None when one would need beyond 999."""
        needs = [c.needed for c in self.contrasts]
        return None if not needs or None in needs else max(needs)

    def as_dict(self) -> dict:
        return {
            "claim": self.claim,
            "evidence": self.evidence,
            "outcome": self.outcome,
            "reason": self.reason,
            "seeds": self.seeds,
            "needed": self.needed,
            "contrasts": [c.as_dict() for c in self.contrasts],
        }


def margin_of(gain: float) -> float:
    """The equivalence margin of a claim about `gain`: ±25% of its size."""
    return EQUIVALENCE * abs(gain)


def _verdict(claim: str, contrasts: Sequence[Contrast], outcome: str, reason: str) -> Verdict:
    """The verdict, given only at a look of the plan; the evidence lists every contrast with its interval."""
    contrasts = tuple(contrasts)
    n = min(c.interval.n for c in contrasts)
    if outcome != UNDECIDED and n not in STEPS:
        outcome, reason = UNDECIDED, f"{n} seeds is not a look of the plan ({', '.join(map(str, STEPS))})"
    if outcome == UNDECIDED:
        reason = f"{undecided_at(n)}: {reason}"
    evidence = "; ".join(str(c) for c in contrasts) + f" ({LOOK_LEVEL:.0%} intervals over {n} training seeds)"
    return Verdict(claim, evidence, outcome, reason, contrasts)


def raises(claim: str, gain: Contrast) -> Verdict:
    """Claim an adapter raises a score over base (`gain`: adapter − base per seed)."""
    if gain.above():
        return _verdict(claim, [gain], CONFIRMED, "the interval of the gain lies above 0")
    if gain.below():
        return _verdict(claim, [gain], REFUTED, "the interval of the gain lies below 0")
    return _verdict(claim, [gain], UNDECIDED, "the interval of the gain holds 0")


def beats_each(claim: str, versus: Sequence[Contrast]) -> Verdict:
    """Claim a combination beats each single adapter (`versus`: combination − single per seed, each with the margin
    of the single's gain): refuted when below one, or equal to one within its margin."""
    if all(c.above() for c in versus):
        return _verdict(claim, versus, CONFIRMED, "above every single adapter (each interval above 0)")
    if any(c.below() for c in versus):
        return _verdict(claim, versus, REFUTED, "below a single adapter (an interval below 0)")
    if any(c.inside_margin() for c in versus):
        return _verdict(claim, versus, REFUTED, "equal to a single adapter within ±25% of its gain")
    return _verdict(claim, versus, UNDECIDED, "an interval holds 0 and reaches beyond the margin")


def better_at_equal_gain(claim: str, gains: Contrast, kept: Contrast) -> Verdict:
    """Claim A keeps more than B at equal gain: `gains` (A − B on the trained objective, margin 25% of the gain)
    must be equal within its margin; then `kept` (A − B where semantics are judged) decides."""
    both = [gains, kept]
    if gains.outside_margin():
        return _verdict(claim, both, UNDECIDED, "the gains differ beyond the margin: not at equal gain")
    if not gains.inside_margin():
        return _verdict(claim, both, UNDECIDED, "equal gain not shown (the gains' interval reaches past ±margin)")
    if kept.above():
        return _verdict(claim, both, CONFIRMED, "at equal gain (within ±margin) the first keeps more")
    if kept.below():
        return _verdict(claim, both, REFUTED, "at equal gain (within ±margin) the first keeps less")
    return _verdict(claim, both, UNDECIDED, "at equal gain (within ±margin), what each keeps differs by an interval "
                    "that holds 0")  # fmt: skip


def keeps_gains(claim: str, tasks: Sequence[tuple[Contrast, Contrast]]) -> Verdict:
    """Claim a combined adapter keeps each task's gain, per task (combined − base, combined − the task's own
    adapter with the margin of its gain): confirmed when above base on every task and never more than the margin
    below the task's own adapter; refuted when below base or beyond the margin below the own adapter on a task."""
    tasks = [(gain, replace(own, noninferiority=True)) for gain, own in tasks]
    flat = [c for pair in tasks for c in pair]
    if any(gain.below() or own.below_margin() for gain, own in tasks):
        return _verdict(claim, flat, REFUTED, "on a task below base, or more than 25% of the task's gain lost")
    if all(gain.above() and own.not_below_margin() for gain, own in tasks):
        return _verdict(claim, flat, CONFIRMED, "above base on every task and within 25% of each task's own gain")
    return _verdict(
        claim, flat, UNDECIDED, "on a task the gain's interval holds 0 or the loss reaches past the margin"
    )


def differ(claim: str, pairs: Sequence[Contrast]) -> Verdict:
    """Claim A and B differ, on several paired measurements (A − B, each with a margin): confirmed when one
    interval excludes 0 without lying inside its margin, refuted when every one lies inside its margin."""
    if any(c.excludes_zero and not c.inside_margin() for c in pairs):
        return _verdict(claim, pairs, CONFIRMED, "a difference's interval excludes 0")
    if all(c.inside_margin() for c in pairs):
        return _verdict(claim, pairs, REFUTED, "every difference lies within ±25% of the size measured")
    return _verdict(claim, pairs, UNDECIDED, "an interval holds 0 and reaches beyond its margin")


def over_optimised(claim: str, heldout: Contrast, falls: Contrast | None, proxy_after: Contrast | None) -> Verdict:
    """Claim optimising a learned reward loses the exact one: `heldout` (adapter − base, exact judge, held-out),
    and when per-epoch metrics exist `falls` (exact judge, last epoch − its peak epoch) and `proxy_after` (the
    learned reward over the same epochs). Confirmed when held-out the judge ends below base, or after its peak it
    falls while the learned reward does not; refuted at this budget when held-out the judge rose and no fall is
    shown."""
    contrasts = [c for c in (heldout, falls, proxy_after) if c is not None]
    if heldout.below():
        return _verdict(claim, contrasts, CONFIRMED, "held-out, the exact judge ends below base")
    if falls is not None and falls.below() and not (proxy_after is not None and proxy_after.below()):
        return _verdict(
            claim, contrasts, CONFIRMED, "after its peak epoch the exact judge falls, the learned does not"
        )
    if heldout.above() and (falls is None or not falls.below()):
        return _verdict(claim, contrasts, REFUTED, "at this budget: held-out, the exact judge rose with the learned "
                        "one (a longer run could still over-optimise)")  # fmt: skip
    return _verdict(claim, contrasts, UNDECIDED, "held-out, the exact judge's change holds 0")


def paired(
    first: Mapping[int, Mapping[tuple[str, int], float]],
    second: Mapping[int, Mapping[tuple[str, int], float]] | Mapping[tuple[str, int], float],
    name: str,
    margin: float | None = None,
) -> Contrast:
    """The contrast `first` − `second` from per-image scores {seed: {(prompt, noise seed): score}}; `second` may be
    the base model's {(prompt, noise seed): score}, the same for every seed. Seeds judged on both only."""
    images: dict[int, dict[tuple[str, int], float]] = {}
    for seed, scores in first.items():
        other = second if _is_base(second) else second.get(seed)
        if other is None:
            continue
        if scores.keys() != other.keys():
            raise ValueError(f"{name}: seed {seed}'s two arms were judged on different images")
        images[seed] = {image: scores[image] - other[image] for image in scores}
    if not images:
        raise ValueError(f"{name}: no training seed judged on both arms")
    per_seed = {seed: math.fsum(diffs.values()) / len(diffs) for seed, diffs in sorted(images.items())}
    return Contrast(name, per_seed, margin, components(images))


def _is_base(scores: Mapping) -> bool:
    return bool(scores) and isinstance(next(iter(scores)), tuple)


def signed(e: Estimate) -> str:
    """A change with its sign: `+0.1714 ± 0.0231`."""
    return f"{e.mean:+.4f} ± {e.ci:.4f}" if e.n > 1 else f"{e.mean:+.4f}"
