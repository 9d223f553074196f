"""Reward registry: the names users type, mapped to factories that build a `RewardFn`.

A new reward is one module in this package plus one line in `REWARDS`. Factories take the device and
dtype the scorer should run in and import heavy dependencies inside themselves, so that listing or
parsing rewards never loads a model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from texforce.errors import TexforceError
from texforce.rewards.base import RewardFn, RewardOutput, WeightedReward
from texforce.rewards.jpeg import JpegCompressibility, JpegIncompressibility

RewardFactory = Callable[[torch.device, torch.dtype], RewardFn]


def _world_alignment(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.world.reward import WorldAlignmentReward

    return WorldAlignmentReward()


REWARDS: dict[str, RewardFactory] = {
    "jpeg_compressibility": lambda device, dtype: JpegCompressibility(),
    "jpeg_incompressibility": lambda device, dtype: JpegIncompressibility(),
    "world_alignment": _world_alignment,
}

REWARD_DESCRIPTIONS: dict[str, str] = {
    "jpeg_compressibility": "minus the JPEG size in kB (quality 95); DDPO's compressibility task",
    "jpeg_incompressibility": "the JPEG size in kB (quality 95); DDPO's incompressibility task",
    "world_alignment": "offline world: exact prompt-image alignment in [0, 1] from scene analysis",
}


def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
    """Parse `name[:weight]+name[:weight]…` into `[(name, weight), …]`; validates names and weights."""
    terms = []
    for part in spec.replace(" ", "").split("+"):
        if not part:
            raise TexforceError(f"empty term in reward spec {spec!r}; write e.g. 'jpeg_compressibility:1.0'")
        name, _, weight_text = part.partition(":")
        if name not in REWARDS:
            raise TexforceError(f"unknown reward {name!r}; valid rewards: {', '.join(sorted(REWARDS))}")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise TexforceError(f"reward weight {weight_text!r} of {name!r} is not a number") from None
        if any(name == seen for seen, _ in terms):
            raise TexforceError(f"reward {name!r} appears twice in {spec!r}")
        terms.append((name, weight))
    return terms


def build_reward(
    spec: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> WeightedReward:
    """Build the weighted reward described by `spec`, e.g. `jpeg_compressibility:1.0+aesthetic:0.5`."""
    device = torch.device(device)
    return WeightedReward([(name, w, REWARDS[name](device, dtype)) for name, w in parse_reward_spec(spec)])


__all__ = ["REWARDS", "RewardFn", "RewardOutput", "WeightedReward", "build_reward", "parse_reward_spec"]
