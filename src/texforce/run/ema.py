"""An exponential moving average of the trained parameters (the adapters), updated after every optimizer step.

With `train.ema_decay` d > 0 the run's final evaluation and its exported adapters use the average
θ̄ ← d·θ̄ + (1 − d)·θ instead of the last iterate, which smooths the step-to-step noise of a policy-gradient run
(Flow-GRPO keeps one). Checkpoints hold the live weights (in `lora/`) and the average (in the trainer state), so a
resumed run goes on exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


class ParameterEMA:
    """θ̄ of `params` with decay `decay`, starting at their current values."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.params, self.decay = list(params), decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for average, param in zip(self.shadow, self.params, strict=True):
            average.lerp_(param.detach(), 1 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the parameters hold the average; afterwards their own values again."""
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, average in zip(self.params, self.shadow, strict=True):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, live, strict=True):
                    param.copy_(value)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"shadow": [t.cpu() for t in self.shadow]}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        self.shadow = [t.to(p.device, p.dtype) for t, p in zip(state["shadow"], self.params, strict=True)]
