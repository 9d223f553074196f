"""`ddim_step` re-implements `diffusers.DDIMScheduler.step` (diffusers 0.42.1, `schedulers/scheduling_ddim.py`) as
the step's Gaussian (mean, std); `step_with_logprob` draws or scores a transition with three changes:
1. timesteps may differ per sample (a (B,) tensor), so one U-Net call can serve several timesteps;
2. `prev_sample` may be given, to score a recorded transition instead of drawing a new one;
3. it returns the log-density of `prev_sample` under the step's Gaussian, averaged over latent
   dimensions as DDPO does (so PPO clip ranges such as 1e-4 carry over).

Symbols follow the DDIM paper, eq. (12) and (16): a_t = alphas_cumprod[t], a_prev = alphas_cumprod[t - k],
sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from texforce.errors import TexforceError


def ddim_alphas(scheduler: DDIMScheduler, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """a_t and a_prev per sample, shaped to broadcast against `like` (B, C, h, w), in fp32."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev = timesteps - step
    a_t = alphas_cumprod[timesteps]
    a_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], scheduler.final_alpha_cumprod)
    shape = (-1,) + (1,) * (like.ndim - 1)
    return a_t.view(shape).float(), a_prev.view(shape).float()


def ddim_step(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian of one DDIM step x_t -> x_prev: its mean (B, C, h, w) and std (B, 1, 1, 1), in fp32.

    Differentiable in `model_output` and `sample`; with eta = 0 the std is 0 and the step is deterministic.
    """
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) first")
    if scheduler.config.thresholding:
        raise TexforceError("DDIM thresholding is not supported")
    sample32, output32 = sample.float(), model_output.float()
    if not torch.is_tensor(timesteps):
        timesteps = torch.full((sample.shape[0],), int(timesteps), device=sample.device)
    a_t, a_prev = ddim_alphas(scheduler, timesteps.to(sample.device).long(), sample32)
    b_t = 1 - a_t

    # 1. predicted x_0 and epsilon (eq. 12), for each parameterisation
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        pred_x0 = (sample32 - b_t.sqrt() * output32) / a_t.sqrt()
        pred_eps = output32
    elif kind == "v_prediction":
        pred_x0 = a_t.sqrt() * sample32 - b_t.sqrt() * output32
        pred_eps = a_t.sqrt() * output32 + b_t.sqrt() * sample32
    elif kind == "sample":
        pred_x0 = output32
        pred_eps = (sample32 - a_t.sqrt() * pred_x0) / b_t.sqrt()
    else:
        raise TexforceError(f"unsupported prediction_type {kind!r}")
    if scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        pred_x0 = pred_x0.clamp(-r, r)

    # 2. sigma_t (eq. 16) and the mean of x_prev
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.clamp(min=0).sqrt()
    mean = a_prev.sqrt() * pred_x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * pred_eps
    return mean, std
