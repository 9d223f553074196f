"""The contract between the `Trainer` and an algorithm: what an algorithm is lent (`TrainingContext`) and what it
provides (`Algorithm`); each epoch it returns an `EpochStats` for the logs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from accelerate import PartialState

    from texforce.algorithms.policy import Policy
    from texforce.config import SharedConfig
    from texforce.observe.runlog import EpochStats, RunLogger
    from texforce.rewards import RewardOutput, WeightedReward


class TrainingContext(Protocol):
    """What the `Trainer` lends an algorithm: the run's shared config and machinery."""

    config: SharedConfig
    policy: Policy
    log: RunLogger
    dist: PartialState  # this process's place among the run's processes
    reward_fn: WeightedReward
    epoch: int  # the epoch being trained, 1-based

    def draw_prompts(self, generator: torch.Generator, group_size: int = 1) -> list[str]: ...

    def judged(self, prompts: Sequence[str]) -> list[str]: ...

    def process_share(self, items: Sequence[Any]) -> list[Any]: ...

    def batch_generators(self, epoch: int) -> list[torch.Generator]: ...

    def my_micro_batches(self, num_micro_batches: int) -> list[int]: ...

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput: ...

    def finite_rewards(self, rewards: torch.Tensor, epoch: int) -> np.ndarray: ...

    def optimizer_step(self) -> float: ...


class Algorithm(Protocol):
    """What the `Trainer` needs of an algorithm. It is built as `cls(context, **its_sections)`, and
    `check_config(config, **its_sections)` runs when a config that selects it loads."""

    sections: ClassVar[dict[str, type]]  # its own config sections by key (`ddpo`: DDPOConfig); RunConfig adds them
    steps_per_epoch: int  # optimizer steps per epoch (the LR schedule's unit)

    def run_epoch(self, epoch: int, generator: torch.Generator) -> EpochStats:
        """Train epoch `epoch` (0-based), drawing every random choice from `generator`."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
