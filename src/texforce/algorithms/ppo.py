"""Rewards to advantages, and PPO's clipped surrogate loss over one denoising step."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


class PerPromptStatTracker:
    """Normalises each prompt's rewards by the mean/std of that prompt's recent rewards (DDPO).

    Until a prompt has `min_count` rewards in its buffer, the whole batch's statistics are used.
    The buffers persist across epochs and are part of a checkpoint.
    """

    def __init__(self, buffer_size: int, min_count: int) -> None:
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        advantages = np.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):  # unique, in order
            mask = np.array([p == prompt for p in prompts])
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[mask].tolist())
            if len(buffer) < self.min_count:
                mean, std = rewards.mean(), rewards.std()
            else:
                mean, std = np.mean(buffer), np.std(buffer)
            advantages[mask] = (rewards[mask] - mean) / (std + 1e-6)
        return advantages

    def state_dict(self) -> dict[str, list[float]]:
        return {prompt: list(buffer) for prompt, buffer in self.buffers.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.buffers = {p: deque(values, maxlen=self.buffer_size) for p, values in state.items()}


def group_advantages(prompts: Sequence[str], rewards: np.ndarray, scale: str = "group") -> np.ndarray:
    """Centre each reward on the mean of the same prompt's rewards of this batch only (GRPO's groups: the epoch
    draws each prompt `advantage.group_size` times), then divide by that group's std (`scale="group"`, GRPO) or by
    the std of all the centred rewards (`scale="batch"`, as Dr. GRPO argues: a group whose few images score alike
    has a tiny std, and dividing by it blows their noise up to full-size advantages)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    centred = np.empty_like(rewards)
    spread = np.empty_like(rewards)
    for prompt in dict.fromkeys(prompts):
        mask = np.array([p == prompt for p in prompts])
        centred[mask] = rewards[mask] - rewards[mask].mean()
        spread[mask] = rewards[mask].std()
    if scale == "batch":
        return centred / (centred.std() + 1e-6)
    return centred / (spread + 1e-6)


def batch_advantages(rewards: np.ndarray) -> np.ndarray:
    """Normalise by the whole batch's mean and std."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return (rewards - rewards.mean()) / (rewards.std() + 1e-6)


@dataclass
class PPOStats:
    """Per-step diagnostics, each a scalar tensor averaged over the batch.

    approx_kl = 0.5 * mean((log_prob - old_log_prob)^2); clipfrac = share of ratios outside 1 ± clip_range.
    """

    loss: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor
    ratio: torch.Tensor


def ppo_clipped_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> PPOStats:
    """PPO's clipped surrogate for one step, all inputs (B,): mean(max(-A·r, -A·clip(r, 1±ε)))."""
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = 0.5 * ((log_probs - old_log_probs) ** 2).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
    return PPOStats(loss=loss, approx_kl=approx_kl, clipfrac=clipfrac, ratio=ratio.detach().mean())
