"""What the world's pre-trainings share (the U-Net world's `pretrain` and world-flow's `flow`): the learning-rate
schedule and the optimizer step with its EMA update."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def warmup_cosine(num_steps: int, warmup: int) -> Callable[[int], float]:
    """A `LambdaLR` factor: linear warm-up over `warmup` steps, then cosine decay to 10 %."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, num_steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    return factor


def step_with_ema(
    loss: torch.Tensor,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    ema_decay: float,
) -> None:
    """One optimizer step on `loss` (gradient norm clipped to 1) and the EMA's update; the EMA's decay warms up as
    (1 + step) / (10 + step) to `ema_decay`, so early weights do not linger."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
