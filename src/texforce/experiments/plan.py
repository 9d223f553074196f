"""The sequential seed plan, fixed before any seed runs (issue #30): seeds are added in steps, each claim is judged
only at a step (a look), and it stops when its verdict stands or at the cap.

Looks at `STEPS` seeds (3 → 5 → 8 → 12 → 16). At each look a claim's paired differences get a two-sided t-interval at
`LOOK_LEVEL` = 1 − 0.05 / 5 = 99%: over the five looks, the chance that any look decides wrongly (a 0 effect called
a difference, or a difference beyond the margin called equal) is at most 5% (Bonferroni), so looking five times
costs nothing in error, only in width. A claim undecided at the cap is reported "undecided at 16"; one whose seeds
stopped earlier for lack of compute, "undecided at N (cap not reached: budget)".
"""

from __future__ import annotations

from collections.abc import Collection

STEPS = (3, 5, 8, 12, 16)
CAP = STEPS[-1]
LOOK_LEVEL = 1 - 0.05 / len(STEPS)


def next_look(num_seeds: int) -> int | None:
    """The first look with more seeds than `num_seeds`; None at or past the cap."""
    return next((step for step in STEPS if step > num_seeds), None)


def next_seeds(done: Collection[int], decided: bool) -> list[int]:
    """The training seeds to run next for a claim with per-seed data for the seeds `done`: none when its verdict
    stands (`decided`: the verdicts decide only at a look) or the cap is reached, else the lowest unused seeds up to
    the next look."""
    look = next_look(len(done))
    if decided or look is None:
        return []
    free = (seed for seed in range(CAP * 2) if seed not in done)
    return [next(free) for _ in range(look - len(done))]


def undecided_at(num_seeds: int) -> str:
    """Where an undecided claim stands: "at 16 (cap)", or "at N (cap not reached: budget)" for seeds stopped
    before the cap."""
    if num_seeds >= CAP:
        return f"at {num_seeds} (cap)"
    return f"at {num_seeds} (cap not reached: budget)"
