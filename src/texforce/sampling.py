"""Sampling chains of DDIM (Stable Diffusion, SDXL) or of flow matching (SD3, FLUX): with per-step Gaussian
log-probabilities (DDPO's actions and their likelihoods), or as one differentiable chain whose last K steps keep
their graph (direct reward backprop). `step_gaussian` is the one step both serve, chosen by the scheduler.

`ddim_step` re-implements `diffusers.DDIMScheduler.step` (diffusers 0.42.1, `schedulers/scheduling_ddim.py`) as
the step's Gaussian (mean, std); `step_with_logprob` draws or scores a transition with three changes:
1. timesteps may differ per sample (a (B,) tensor), so one U-Net call can serve several timesteps;
2. `prev_sample` may be given, to score a recorded transition instead of drawing a new one;
3. it returns the log-density of `prev_sample` under the step's Gaussian, averaged over latent
   dimensions as DDPO does (so PPO clip ranges such as 1e-4 carry over).

Symbols follow the DDIM paper, eq. (12) and (16): a_t = alphas_cumprod[t], a_prev = alphas_cumprod[t - k],
sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).

`flow_step` is Flow-GRPO's SDE step of a flow-matching model (x_1 noise, x_0 data, velocity v = noise - data):
with sigma = sigmas[i], sigma' = sigmas[i + 1], dt = sigma' - sigma < 0 and noise level a (here `eta`),
std_t = a * sqrt(sigma / (1 - sigma)) (at sigma = 1, sigmas[1] in the denominator), the step is Gaussian with
mean x + v dt + std_t^2 / (2 sigma) (x + (1 - sigma) v) dt and std std_t sqrt(-dt); a = 0 is the Euler step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from texforce.errors import TexforceError

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
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


@dataclass
class Trajectory:
    """One batch of sampled denoising chains; everything PPO needs to replay them.

    prompts: B strings; prompt_ids (B, L) token ids of every tokenizer side by side (SD: one, L = 77; SDXL: two,
    L = 2 × 77), which the update re-encodes with gradients;
    latents (B, T+1, C, h, w) from pure noise to the final latent; log_probs (B, T) of each transition;
    timesteps (T,) in sampling order; images (B, 3, H, W) in [0, 1].
    """

    prompts: list[str]
    prompt_ids: torch.Tensor
    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor
    images: torch.Tensor


@dataclass
class Conditioning:
    """What the U-Net is conditioned on, for B samples: prompt embeddings (B, L, D) and, for SDXL, the pooled
    embeddings (B, P) and size/crop time ids (B, 6) that `StableDiffusionXLPipeline` passes as `added_cond_kwargs`."""

    prompt_embeds: torch.Tensor
    pooled_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return self.prompt_embeds, self.pooled_embeds, self.time_ids

    def tensors(self) -> list[torch.Tensor]:
        """Its tensors, in field order (prompt embeddings first)."""
        return [t for t in self._fields() if t is not None]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        """The same conditioning with `fn` applied to each of its tensors."""
        return Conditioning(*(None if t is None else fn(t) for t in self._fields()))

    def after(self, negative: Conditioning) -> Conditioning:
        """A classifier-free-guidance batch of 2B: `negative`'s rows first, then these."""
        pairs = zip(negative._fields(), self._fields(), strict=True)
        return Conditioning(*(None if n is None else torch.cat([n, p]) for n, p in pairs))

    def unet_kwargs(self, dtype: torch.dtype) -> dict:
        """Keyword arguments of a U-Net call, in `dtype` (SDXL's extras in `added_cond_kwargs`)."""
        kwargs: dict = {"encoder_hidden_states": self.prompt_embeds.to(dtype)}
        if self.pooled_embeds is not None:
            added = {"text_embeds": self.pooled_embeds.to(dtype), "time_ids": self.time_ids.to(dtype)}
            kwargs["added_cond_kwargs"] = added
        return kwargs


def _alphas(scheduler: DDIMScheduler, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
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
    a_t, a_prev = _alphas(scheduler, timesteps.to(sample.device).long(), sample32)
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


def _flow_sigmas(
    scheduler: FlowMatchEulerDiscreteScheduler, timesteps: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sigma, sigma' (the next step's) and Flow-GRPO's sigma_max (sigmas[1]) per sample, shaped to broadcast against
    `like`, in fp32: each timestep is found in the scheduler's current schedule."""
    schedule = scheduler.timesteps.to(timesteps.device, torch.float32)
    index = (schedule[None, :] - timesteps.float()[:, None]).abs().argmin(dim=1)
    sigmas = scheduler.sigmas.to(timesteps.device, torch.float32)
    shape = (-1,) + (1,) * (like.ndim - 1)
    sigma_max = sigmas[min(1, len(sigmas) - 1)].expand(len(index))
    return sigmas[index].view(shape), sigmas[index + 1].view(shape), sigma_max.reshape(shape)


def flow_step(
    scheduler: FlowMatchEulerDiscreteScheduler,
    model_output: torch.Tensor,
    timesteps: torch.Tensor | float,
    sample: torch.Tensor,
    noise_level: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian of one flow-matching SDE step x_sigma -> x_sigma' (Flow-GRPO's): its mean (B, ...) and std
    (B, 1, ...), in fp32. Differentiable in `model_output` (the velocity) and `sample`; at noise level 0 the std is
    0 and the mean is the Euler step x + v dt of `FlowMatchEulerDiscreteScheduler.step`."""
    if scheduler.num_inference_steps is None:
        raise ValueError("call set_timesteps(scheduler, num_steps, latents) first")
    sample32, velocity = sample.float(), model_output.float()
    timesteps = torch.as_tensor(timesteps, dtype=torch.float32, device=sample.device).expand(sample.shape[0])
    sigma, sigma_next, sigma_max = _flow_sigmas(scheduler, timesteps.to(sample.device), sample32)
    dt = sigma_next - sigma
    std_t = noise_level * (sigma / (1 - torch.where(sigma >= 1, sigma_max, sigma))).sqrt()
    mean = sample32 + velocity * dt + std_t**2 / (2 * sigma) * (sample32 + (1 - sigma) * velocity) * dt
    return mean, std_t * (-dt).sqrt()


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


def _noise_like(sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
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

    If `prev_sample` is None a new one is drawn (noise from `generator`); otherwise the given transition is
    scored. Computation is in fp32 whatever the model's dtype; eta must be > 0.
    """
    mean, std = step_gaussian(scheduler, model_output, timesteps, sample, eta)
    prev32 = mean + std * _noise_like(mean, generator) if prev_sample is None else prev_sample.float()
    return prev32.to(sample.dtype), gaussian_log_prob(prev32, mean, std)


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


def check_schedule(scheduler: Scheduler, num_steps: int, latents: torch.Tensor | None = None) -> None:
    """Every step of `num_steps` must have positive variance, else its log-prob is NaN and one update poisons the
    LoRA. Any spacing (leading, trailing, linspace) and any number of steps, one included. (`latents`, a latent
    of the sampled size, sets FLUX's resolution-dependent schedule.)"""
    set_timesteps(scheduler, num_steps, torch.zeros(1, 1, 64, 64) if latents is None else latents)
    _check_variance(scheduler)


def _check_variance(scheduler: Scheduler) -> None:
    """Raise a one-line `TexforceError` naming the steps of the scheduler's current timesteps whose variance is not
    positive (or undefined)."""
    if is_flow(scheduler):
        sigmas = scheduler.sigmas.cpu()
        if not (sigmas[:-1] > sigmas[1:]).all() or sigmas[0] > 1:
            raise TexforceError(f"the flow-matching schedule's sigmas {sigmas.tolist()} do not decrease from <= 1")
        return
    timesteps = scheduler.timesteps.cpu()
    a_t, a_prev = _alphas(scheduler, timesteps.long(), torch.zeros(len(timesteps), 1))
    positive = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) > 0  # False for 0 and NaN
    if not positive.all():
        c = scheduler.config
        bad = timesteps[~positive.view(-1)].tolist()
        raise TexforceError(
            f"the DDIM schedule ({c.timestep_spacing} spacing, steps_offset={c.steps_offset}, set_alpha_to_one="
            f"{c.set_alpha_to_one}, {len(timesteps)} steps) has zero-variance steps at t={bad}; their log-probability "
            "is undefined: use set_alpha_to_one=false, steps_offset=1 (leading spacing) or fewer sampling steps"
        )


NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pack_flux_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents as FLUX's sequence of 2 × 2 patches (B, h/2 · w/2, 4C), row-major."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack_flux_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_flux_latents`: (B, h/2 · w/2, 4C) to (B, C, h, w)."""
    b, _, channels = packed.shape
    c = channels // 4
    return packed.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def flux_image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """FLUX's position ids (h/2 · w/2, 3) of the latent patches: (0, row, column)."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device)
    ids[..., 1] = torch.arange(height // 2, device=device)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device)[None, :]
    return ids.reshape(-1, 3)


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
    _check_variance(scheduler)
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
        noise = _noise_like(latents, generator) if eta > 0 else None
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
