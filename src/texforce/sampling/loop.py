"""The sampling loop: the denoiser's guided output, a chain with per-step log-probs (`sample_latents`, DDPO) or one
differentiable chain whose last K steps keep their graph (`denoise`, direct reward backprop), and VAE decoding."""

from __future__ import annotations

from collections.abc import Callable

import torch

from texforce.sampling.flow import flux_image_ids, pack_flux_latents, unpack_flux_latents
from texforce.sampling.schedulers import (
    Scheduler,
    check_variance,
    initial_latents_of,
    model_input,
    set_timesteps,
)
from texforce.sampling.step import noise_like, step_gaussian, step_with_logprob
from texforce.sampling.trajectory import Conditioning

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def denoiser_output(
    model: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning, guidance: float
) -> torch.Tensor:
    """One call of the denoiser as its pipeline makes it, on latents (B, C, h, w): the U-Net (SD, SDXL: the noise,
    or v), SD3's transformer or FLUX's (the velocity; FLUX's on its 2 × 2-patch sequence, timestep / 1000, and the
    guidance scale as an embedding when the model has one: FLUX.1-dev's)."""
    dtype = next(model.parameters()).dtype
    kind = type(model).__name__
    c = conditioning
    if kind == "SD3Transformer2DModel":
        return model(
            hidden_states=latents.to(dtype),
            timestep=timesteps,
            encoder_hidden_states=c.prompt_embeds.to(dtype),
            pooled_projections=c.pooled_embeds.to(dtype),
        ).sample
    if kind == "FluxTransformer2DModel":
        height, width = latents.shape[-2:]
        embedded = torch.full_like(timesteps, guidance, dtype=torch.float32) if model.config.guidance_embeds else None
        output = model(
            hidden_states=pack_flux_latents(latents.to(dtype)),
            timestep=timesteps.to(dtype) / 1000,
            guidance=embedded,
            encoder_hidden_states=c.prompt_embeds.to(dtype),
            pooled_projections=c.pooled_embeds.to(dtype),
            img_ids=flux_image_ids(height, width, latents.device),
            txt_ids=torch.zeros(c.prompt_embeds.shape[1], 3, device=latents.device),
        ).sample
        return unpack_flux_latents(output, height, width)
    return model(latents.to(dtype), timesteps, **c.unet_kwargs(dtype)).sample


def guided_noise_fn(
    model: torch.nn.Module,
    prompt_embeds: Conditioning | torch.Tensor,
    negative_embeds: Conditioning | torch.Tensor | None,
    guidance_scale: float,
) -> NoisePredictor:
    """`(latents (B,C,h,w), timesteps (B,)) -> model output (B,C,h,w)` with classifier-free guidance.

    `model` is the U-Net or transformer (`denoiser_output`). The conditioning is a `Conditioning` (SDXL's and SD3's
    pooled embeddings too) or bare prompt embeddings (B, L, D). The negative and positive branches run as one batch
    of 2B, as diffusers does at inference. Without `negative_embeds` (guidance disabled, or FLUX, whose guidance
    scale is an embedding) only the positive branch runs. Guidance applies when `guidance_scale` > 1, as in
    diffusers.
    """
    positive = prompt_embeds if isinstance(prompt_embeds, Conditioning) else Conditioning(prompt_embeds)
    negative = negative_embeds
    if negative is not None and not isinstance(negative, Conditioning):
        negative = Conditioning(negative)

    def predict(latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if negative is None or guidance_scale <= 1:
            return denoiser_output(model, latents, timesteps, positive, guidance_scale)
        both = positive.after(negative)
        output = denoiser_output(
            model, torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), both, guidance_scale
        )
        uncond, cond = output.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    return predict


@torch.no_grad()
def sample_latents(
    predict: NoisePredictor,
    scheduler: Scheduler,
    initial_latents: torch.Tensor,
    num_steps: int,
    eta: float,
    generator: torch.Generator | None = None,
    progress: Callable[[], None] | None = None,
    stochastic: range | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the sampling chain (DDIM, or the flow SDE) from `initial_latents` (standard normal noise). Returns
    latents (B, T+1, ...), log_probs (B, T), timesteps (T,).

    `stochastic` (step indices; None: all) are the steps drawn at `eta` with a log-prob (an SDE window, as MixGRPO);
    the others are deterministic steps (eta 0, no noise drawn) whose log-prob is recorded as 0.
    A schedule with a zero-variance step is refused (one line) before any U-Net call: its log-prob would be NaN."""
    set_timesteps(scheduler, num_steps, initial_latents)
    check_variance(scheduler)
    stochastic = range(num_steps) if stochastic is None else stochastic
    latents = initial_latents_of(scheduler, initial_latents)
    all_latents, all_log_probs = [latents], []
    for index, t in enumerate(scheduler.timesteps):
        timesteps = t.expand(latents.shape[0])
        noise_pred = predict(model_input(scheduler, latents, t), timesteps)
        if index in stochastic:
            latents, log_prob = step_with_logprob(scheduler, noise_pred, timesteps, latents, eta, generator=generator)
        else:
            mean, _ = step_gaussian(scheduler, noise_pred, timesteps, latents, 0.0)
            latents, log_prob = mean.to(latents.dtype), torch.zeros(len(latents), device=latents.device)
        all_latents.append(latents)
        all_log_probs.append(log_prob)
        if progress is not None:
            progress()
    return torch.stack(all_latents, dim=1), torch.stack(all_log_probs, dim=1), scheduler.timesteps.clone()


def denoise(
    predict: NoisePredictor,
    scheduler: Scheduler,
    initial_latents: torch.Tensor,
    num_steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    grad_steps: int = 0,
    checkpoint: bool = False,
) -> torch.Tensor:
    """The sampling chain (DDIM, or the flow ODE/SDE) from `initial_latents` to the final latents (B, C, h, w),
    without log-probabilities.

    The first `num_steps - grad_steps` steps run without a graph; the last `grad_steps` keep theirs, so a loss on
    the result reaches whatever `predict` depends on (DRaFT-K; K = 0: no graph at all). With `checkpoint`, each
    of those U-Net calls is recomputed in the backward pass instead of storing its activations. With eta > 0
    the noise comes from `generator` and is a constant of the graph (the reparameterised sample).
    """
    set_timesteps(scheduler, num_steps, initial_latents)
    latents = initial_latents_of(scheduler, initial_latents)
    first_graph_step = num_steps - grad_steps

    def step(latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        timesteps = t.expand(latents.shape[0])
        output = predict(model_input(scheduler, latents, t), timesteps)
        mean, std = step_gaussian(scheduler, output, timesteps, latents, eta)
        return mean if noise is None else mean + std * noise

    for index, t in enumerate(scheduler.timesteps):
        noise = noise_like(latents, generator) if eta > 0 else None
        if index < first_graph_step:
            with torch.no_grad():
                latents = step(latents, t, noise)
        elif checkpoint:
            latents = torch.utils.checkpoint.checkpoint(step, latents, t, noise, use_reentrant=False)
        else:
            latents = step(latents, t, noise)
    return latents


def decode(vae: torch.nn.Module, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """VAE-decode latents (B, C, h, w) to images (B, 3, H, W) in [0, 1], fp32, keeping the graph (optionally
    recomputed in the backward pass)."""
    dtype = next(vae.parameters()).dtype

    shift = getattr(vae.config, "shift_factor", None) or 0.0  # SD3's and FLUX's VAEs shift their latents

    def run(latents: torch.Tensor) -> torch.Tensor:
        decoded = vae.decode(latents.to(dtype) / vae.config.scaling_factor + shift).sample
        return (decoded.float() / 2 + 0.5).clamp(0, 1)

    return torch.utils.checkpoint.checkpoint(run, latents, use_reentrant=False) if checkpoint else run(latents)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
    """VAE-decode latents (B, C, h, w) to images (B, 3, H, W) in [0, 1], fp32, in chunks to bound memory."""
    return torch.cat([decode(vae, chunk) for chunk in latents.split(chunk_size)])
