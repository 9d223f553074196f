"""The two scheduler kinds the samplers drive — DDIM (SD, SDXL) and flow matching (SD3, FLUX) — and what
differs between them: timesteps, the model's input, the first latents, and the checks a schedule must pass."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from texforce.errors import TexforceError
from texforce.sampling.ddim import ddim_alphas

Scheduler = DDIMScheduler | FlowMatchEulerDiscreteScheduler


def is_flow(scheduler: Scheduler) -> bool:
    """True for a flow-matching scheduler (SD3, FLUX), False for DDIM (SD, SDXL)."""
    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler)


class FluxScheduler(FlowMatchEulerDiscreteScheduler):
    """FLUX's flow-matching scheduler, marked as such: `FluxPipeline` sets its schedule differently from SD3's
    (`set_timesteps` below), from a config the two share. `load_pipeline` gives FLUX pipelines this class."""


def set_timesteps(scheduler: Scheduler, num_steps: int, latents: torch.Tensor) -> None:
    """The sampling schedule of `num_steps` as the model's own pipeline sets it: DDIM's, SD3's, or FLUX's (sigmas
    linspace(1, 1/N, N), shifted by `mu` from the image's 2 × 2-patch count when the scheduler shifts dynamically:
    FLUX.1-dev's)."""
    if not isinstance(scheduler, FluxScheduler):
        scheduler.set_timesteps(num_steps, device=latents.device)
        return
    c = scheduler.config
    patches = latents.shape[-2] * latents.shape[-1] // 4
    mu = calculate_shift(patches, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu, device=latents.device)


def model_input(scheduler: Scheduler, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The latents as the denoiser takes them at `t` (DDIM's input scaling; flow models take them as they are)."""
    return latents if is_flow(scheduler) else scheduler.scale_model_input(latents, t)


def initial_latents_of(scheduler: Scheduler, noise: torch.Tensor) -> torch.Tensor:
    """The chain's first latents from standard normal `noise`."""
    return noise if is_flow(scheduler) else noise * scheduler.init_noise_sigma


def check_schedule(scheduler: Scheduler, num_steps: int, latents: torch.Tensor | None = None) -> None:
    """Every step of `num_steps` must have positive variance, else its log-prob is NaN and one update poisons the
    LoRA. Any spacing (leading, trailing, linspace) and any number of steps, one included. (`latents`, a latent
    of the sampled size, sets FLUX's resolution-dependent schedule.)"""
    set_timesteps(scheduler, num_steps, torch.zeros(1, 1, 64, 64) if latents is None else latents)
    check_variance(scheduler)


def check_variance(scheduler: Scheduler) -> None:
    """Raise a one-line `TexforceError` naming the steps of the scheduler's current timesteps whose variance is not
    positive (or undefined)."""
    if is_flow(scheduler):
        sigmas = scheduler.sigmas.cpu()
        if not (sigmas[:-1] > sigmas[1:]).all() or sigmas[0] > 1:
            raise TexforceError(f"the flow-matching schedule's sigmas {sigmas.tolist()} do not decrease from <= 1")
        return
    timesteps = scheduler.timesteps.cpu()
    a_t, a_prev = ddim_alphas(scheduler, timesteps.long(), torch.zeros(len(timesteps), 1))
    positive = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) > 0  # False for 0 and NaN
    if not positive.all():
        c = scheduler.config
        bad = timesteps[~positive.view(-1)].tolist()
        raise TexforceError(
            f"the DDIM schedule ({c.timestep_spacing} spacing, steps_offset={c.steps_offset}, set_alpha_to_one="
            f"{c.set_alpha_to_one}, {len(timesteps)} steps) has zero-variance steps at t={bad}; their log-probability "
            "is undefined: use set_alpha_to_one=false, steps_offset=1 (leading spacing) or fewer sampling steps"
        )
