"""Prompt engineering in the offline world: quality tags and the careful source's phrasing.

The world's counterpart of "highly detailed, 4k, trending on artstation": a `PromptVariant` writes a set of positive
quality tags (`degrade.POSITIVE_TAGS`) before or after a prompt, and may rephrase the prompt as the careful source
does ("exactly 2 red circles"), whose captions were never wrong in pre-training. `candidate_variants` is every such
variant; the ceiling (ceiling.py) picks the best one on *training* prompts and measures it unchanged on held-out ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from texforce.world.degrade import POSITIVE_TAGS
from texforce.world.scenes import make_caption, parse_prompt

POSITIONS = ("prefix", "suffix")


@dataclass(frozen=True)
class PromptVariant:
    """Tags to add (in this order) before (`prefix`) or after (`suffix`) the prompt, and whether to rephrase it."""

    tags: tuple[str, ...] = ()
    position: str = "prefix"
    careful: bool = False

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, not {self.position!r}")

    @property
    def name(self) -> str:
        parts = ["careful phrasing"] if self.careful else []
        if self.tags:
            parts.append(f"{', '.join(self.tags)} ({self.position})")
        return " + ".join(parts) or "plain"

    def apply(self, prompt: str) -> str:
        """The engineered prompt; it makes the same claim as `prompt` (the judges parse both alike)."""
        text = make_caption(parse_prompt(prompt), careful=True) if self.careful else prompt
        if not self.tags:
            return text
        tags = ", ".join(self.tags)
        return f"{tags}, {text}" if self.position == "prefix" else f"{text}, {tags}"


PLAIN = PromptVariant()


def candidate_variants() -> list[PromptVariant]:
    """Plain, careful, and every non-empty subset of the positive tags in each position, with and without careful."""
    subsets = [s for k in range(1, len(POSITIVE_TAGS) + 1) for s in itertools.combinations(POSITIVE_TAGS, k)]
    tagged = [PromptVariant(s, position) for s in subsets for position in POSITIONS]
    variants = [PLAIN, *tagged]
    return variants + [PromptVariant(v.tags, v.position, careful=True) for v in variants]
