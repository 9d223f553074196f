"""The contract every reward follows, and the weighted sum that combines several."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class RewardFn(Protocol):
    """Scores a batch of images against their prompts.

    `images` is a float tensor (B, 3, H, W) with values in [0, 1], on any device; `prompts` has B strings.
    Returns a float32 tensor (B,) on the CPU; higher is better. Scorers batch internally and never
    move data to a device they were not built for.
    """

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class RewardOutput:
    """The weighted total (B,) and each component's raw score (B,), keyed by reward name."""

    total: torch.Tensor
    components: dict[str, torch.Tensor]


class WeightedReward:
    """`sum_i weight_i * reward_i(images, prompts)`, keeping every component for logging."""

    def __init__(self, terms: Sequence[tuple[str, float, RewardFn]]) -> None:
        if not terms:
            raise ValueError("a reward needs at least one term")
        self.terms = list(terms)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.terms]

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        components = {name: fn(images, prompts).float().cpu() for name, _, fn in self.terms}
        total = sum(weight * components[name] for name, weight, _ in self.terms)
        return RewardOutput(total=total, components=components)
