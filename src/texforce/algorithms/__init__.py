"""Training algorithms. Each owns one epoch of its loop and its config sections; `Trainer` runs the epochs.

| name       | module        | gradient of the reward                                           | config sections     |
|------------|---------------|------------------------------------------------------------------|---------------------|
| `ddpo`     | `ddpo.py`     | PPO's clipped ratio over recorded stochastic DDIM chains         | `ddpo`, `advantage` |
| `backprop` | `backprop.py` | back-propagated through the reward, the VAE and the last K steps | `backprop`          |

A new algorithm is one module here (a class with the `Algorithm` members: its config dataclasses in `sections`,
`check_config`, `run_epoch`, its state) and one line in `ALGORITHMS`; `RunConfig` takes its sections from there.
The policy, sampling, rewards, checkpoints, resume, logging and several processes come from the `Trainer`.
"""

from __future__ import annotations

from typing import Any

from texforce.algorithms.backprop import RewardBackprop
from texforce.algorithms.base import Algorithm, TrainingContext
from texforce.algorithms.ddpo import DDPO
from texforce.observe.runlog import EpochStats

ALGORITHMS: dict[str, type[Algorithm]] = {"ddpo": DDPO, "backprop": RewardBackprop}


def own_sections(algorithm: type[Algorithm], config: Any) -> dict[str, Any]:
    """The config sections of `algorithm`, by key, from a `RunConfig`."""
    return {name: getattr(config, name) for name in algorithm.sections}


def build_algorithm(name: str, context: TrainingContext) -> Algorithm:
    """The algorithm `name` of `ALGORITHMS`, on `context`'s policy, optimizer and reward."""
    algorithm = ALGORITHMS[name]
    return algorithm(context, **own_sections(algorithm, context.config))


__all__ = ["ALGORITHMS", "Algorithm", "EpochStats", "TrainingContext", "build_algorithm", "own_sections"]
