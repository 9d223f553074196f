"""Training algorithms. Each owns one epoch of its loop and one config section; `Trainer` runs the epochs.

| name       | module        | gradient of the reward                                         | config section |
|------------|---------------|----------------------------------------------------------------|----------------|
| `ddpo`     | `ddpo.py`     | PPO's clipped ratio over recorded stochastic DDIM chains       | `ddpo`         |
| `backprop` | `backprop.py` | back-propagated through the reward, the VAE and the last K steps | `backprop`   |

A new algorithm is one module here (a class with the `Algorithm` members, built from the `Trainer`), one line in
`ALGORITHMS` and its section in `config.py`; the policy, sampling, rewards, checkpoints, resume, logging and
several processes come from the `Trainer`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from texforce.trainer import Trainer

ALGORITHMS: dict[str, str] = {
    "ddpo": "texforce.algorithms.ddpo:DDPO",
    "backprop": "texforce.algorithms.backprop:RewardBackprop",
}


@dataclass
class EpochStats:
    """One epoch for the logs: rewards (N,) and components (N,) as scored (NaN/inf included), the update's
    means, phase seconds, fault counts (dropped samples, skipped optimizer steps), and the first images (n, 3, H, W)
    with their prompts for the epoch's grid."""

    rewards: np.ndarray
    components: dict[str, np.ndarray]
    update: dict[str, float]
    seconds: dict[str, float]
    faults: dict[str, int]
    images: torch.Tensor
    prompts: list[str]


class Algorithm(Protocol):
    """What the `Trainer` needs of an algorithm."""

    steps_per_epoch: int  # optimizer steps per epoch (the LR schedule's unit)

    def run_epoch(self, epoch: int, generator: torch.Generator) -> EpochStats:
        """Train epoch `epoch` (0-based), drawing every random choice from `generator`."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_algorithm(name: str, trainer: Trainer) -> Algorithm:
    """The algorithm `name` of `ALGORITHMS`, on `trainer`'s policy, optimizer and reward."""
    module, _, cls = ALGORITHMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(trainer)


__all__ = ["ALGORITHMS", "Algorithm", "EpochStats", "build_algorithm"]
