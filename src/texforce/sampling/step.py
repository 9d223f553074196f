"""The one stochastic step both chains serve (`step_gaussian`, chosen by the scheduler), drawn or scored with its
Gaussian log-probability, and the KL between two steps' Gaussians (DDPO's actions and their likelihoods)."""

from __future__ import annotations

import math

import torch

from texforce.sampling.ddim import ddim_step
from texforce.sampling.flow import flow_step
from texforce.sampling.schedulers import Scheduler, is_flow

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def step_gaussian(
    scheduler: Scheduler,
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int | float,
    sample: torch.Tensor,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian (mean, std) of one sampling step, by the scheduler's kind: `ddim_step` at `eta`, or
    `flow_step` at noise level `eta`."""
    step = flow_step if is_flow(scheduler) else ddim_step
    return step(scheduler, model_output, timesteps, sample, eta)


def noise_like(sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like `sample`, made on the generator's device (a seed gives the same chain
    on any device), in fp32 on `sample`'s device."""
    noise_device = generator.device if generator is not None else sample.device
    return torch.randn(sample.shape, generator=generator, device=noise_device).to(sample.device)


def step_with_logprob(
    scheduler: Scheduler,
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One stochastic step x_t -> x_prev (DDIM at `eta`, or flow SDE at noise level `eta`). Returns
    `(prev_sample, log_prob)`, shapes (B, C, h, w), (B,).

    If `prev_sample` is None a new one is drawn (noise from `generator`) in `sample`'s dtype; otherwise the given
    transition is scored. The log-prob is that of the returned sample as it is (rounded to `sample`'s dtype, which
    the caller stores and re-scores later); computation is in fp32 whatever the model's dtype; eta must be > 0.
    """
    mean, std = step_gaussian(scheduler, model_output, timesteps, sample, eta)
    prev = (mean + std * noise_like(mean, generator)).to(sample.dtype) if prev_sample is None else prev_sample
    return prev, gaussian_log_prob(prev, mean, std)


def gaussian_log_prob(value: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density (B,) of `value` under N(mean, std²) per dimension, averaged over the non-batch dimensions (as
    DDPO does); differentiable in `mean` only (the sample is a constant of the graph)."""
    log_prob = -((value.detach().float() - mean) ** 2) / (2 * std**2) - std.log() - LOG_SQRT_2PI
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def step_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL (B,) between two steps' Gaussians of equal std: ‖mean − reference_mean‖² / 2std², averaged over the
    non-batch dimensions like the log-probs (Flow-GRPO's KL to the frozen policy)."""
    kl = (mean - reference_mean) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))
