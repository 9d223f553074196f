"""DDIM sampling: with per-step Gaussian log-probabilities (DDPO's actions and their likelihoods), or as one
differentiable chain whose last K steps keep their graph (direct reward backprop).

`ddim_step` re-implements `diffusers.DDIMScheduler.step` (diffusers 0.42.1, `schedulers/scheduling_ddim.py`) as
the step's Gaussian (mean, std); `ddim_step_with_logprob` draws or scores a transition with three changes:
1. timesteps may differ per sample (a (B,) tensor), so one U-Net call can serve several timesteps;
2. `prev_sample` may be given, to score a recorded transition instead of drawing a new one;
3. it returns the log-density of `prev_sample` under the step's Gaussian, averaged over latent
   dimensions as DDPO does (so PPO clip ranges such as 1e-4 carry over).

Symbols follow the DDIM paper, eq. (12) and (16): a_t = alphas_cumprod[t], a_prev = alphas_cumprod[t - k],
sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from texforce.errors import TexforceError

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


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

    def unet_kwargs(self, dtype: torch.dtype, negative: Conditioning | None = None) -> dict:
        """Keyword arguments of the U-Net call, in `dtype`; with `negative`, its rows first (a CFG batch of 2B)."""
        both = self
        if negative is not None:
            pairs = zip(negative._fields(), self._fields(), strict=True)
            both = Conditioning(*(None if n is None else torch.cat([n, p]) for n, p in pairs))
        kwargs: dict = {"encoder_hidden_states": both.prompt_embeds.to(dtype)}
        if both.pooled_embeds is not None:
            added = {"text_embeds": both.pooled_embeds.to(dtype), "time_ids": both.time_ids.to(dtype)}
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


def _noise_like(sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like `sample`, made on the generator's device (a seed gives the same chain
    on any device), in fp32 on `sample`'s device."""
    noise_device = generator.device if generator is not None else sample.device
    return torch.randn(sample.shape, generator=generator, device=noise_device).to(sample.device)


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One stochastic DDIM step x_t -> x_prev. Returns `(prev_sample, log_prob)`, shapes (B, C, h, w), (B,).

    If `prev_sample` is None a new one is drawn (noise from `generator`); otherwise the given transition is
    scored. Computation is in fp32 whatever the model's dtype; eta must be > 0.
    """
    mean, std = ddim_step(scheduler, model_output, timesteps, sample, eta)
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


def check_schedule(scheduler: DDIMScheduler, num_steps: int) -> None:
    """Every step of `num_steps` must have positive variance, else its log-prob is NaN and one update poisons the
    LoRA. Any spacing (leading, trailing, linspace) and any number of steps, one included."""
    scheduler.set_timesteps(num_steps)
    _check_variance(scheduler)


def _check_variance(scheduler: DDIMScheduler) -> None:
    """Raise a one-line `TexforceError` naming the steps of the scheduler's current timesteps whose variance is not
    positive (or undefined)."""
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


def guided_noise_fn(
    unet: torch.nn.Module,
    prompt_embeds: Conditioning | torch.Tensor,
    negative_embeds: Conditioning | torch.Tensor | None,
    guidance_scale: float,
) -> NoisePredictor:
    """`(latents (B,C,h,w), timesteps (B,)) -> noise prediction (B,C,h,w)` with classifier-free guidance.

    The conditioning is a `Conditioning` (SDXL's pooled embeddings and time ids go in `added_cond_kwargs`) or bare
    prompt embeddings (B, L, D). The negative and positive branches run as one U-Net batch of 2B, as diffusers does
    at inference. Without `negative_embeds` (guidance disabled) only the positive branch runs.
    Guidance applies when `guidance_scale` > 1, as in diffusers.
    """
    dtype = next(unet.parameters()).dtype
    positive = prompt_embeds if isinstance(prompt_embeds, Conditioning) else Conditioning(prompt_embeds)
    negative = negative_embeds
    if negative is not None and not isinstance(negative, Conditioning):
        negative = Conditioning(negative)

    def predict(latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if negative is None or guidance_scale <= 1:
            return unet(latents.to(dtype), timesteps, **positive.unet_kwargs(dtype)).sample
        output = unet(
            torch.cat([latents, latents]).to(dtype),
            torch.cat([timesteps, timesteps]),
            **positive.unet_kwargs(dtype, negative),
        ).sample
        uncond, cond = output.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    return predict


@torch.no_grad()
def sample_latents(
    predict: NoisePredictor,
    scheduler: DDIMScheduler,
    initial_latents: torch.Tensor,
    num_steps: int,
    eta: float,
    generator: torch.Generator | None = None,
    progress: Callable[[], None] | None = None,
    stochastic: range | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the DDIM chain from `initial_latents`. Returns latents (B, T+1, ...), log_probs (B, T), timesteps (T,).

    `stochastic` (step indices; None: all) are the steps drawn at `eta` with a log-prob (an SDE window, as MixGRPO);
    the others are deterministic DDIM steps (eta 0, no noise drawn) whose log-prob is recorded as 0.
    A schedule with a zero-variance step is refused (one line) before any U-Net call: its log-prob would be NaN."""
    scheduler.set_timesteps(num_steps, device=initial_latents.device)
    _check_variance(scheduler)
    stochastic = range(num_steps) if stochastic is None else stochastic
    latents = initial_latents * scheduler.init_noise_sigma
    all_latents, all_log_probs = [latents], []
    for index, t in enumerate(scheduler.timesteps):
        timesteps = t.expand(latents.shape[0])
        noise_pred = predict(scheduler.scale_model_input(latents, t), timesteps)
        if index in stochastic:
            latents, log_prob = ddim_step_with_logprob(
                scheduler, noise_pred, timesteps, latents, eta, generator=generator
            )
        else:
            mean, _ = ddim_step(scheduler, noise_pred, timesteps, latents, 0.0)
            latents, log_prob = mean.to(latents.dtype), torch.zeros(len(latents), device=latents.device)
        all_latents.append(latents)
        all_log_probs.append(log_prob)
        if progress is not None:
            progress()
    return torch.stack(all_latents, dim=1), torch.stack(all_log_probs, dim=1), scheduler.timesteps.clone()


def denoise(
    predict: NoisePredictor,
    scheduler: DDIMScheduler,
    initial_latents: torch.Tensor,
    num_steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    grad_steps: int = 0,
    checkpoint: bool = False,
) -> torch.Tensor:
    """The DDIM chain from `initial_latents` to the final latents (B, C, h, w), without log-probabilities.

    The first `num_steps - grad_steps` steps run without a graph; the last `grad_steps` keep theirs, so a loss on
    the result reaches whatever `predict` depends on (DRaFT-K; K = 0: no graph at all). With `checkpoint`, each
    of those U-Net calls is recomputed in the backward pass instead of storing its activations. With eta > 0
    the noise comes from `generator` and is a constant of the graph (the reparameterised sample).
    """
    scheduler.set_timesteps(num_steps, device=initial_latents.device)
    latents = initial_latents * scheduler.init_noise_sigma
    first_graph_step = num_steps - grad_steps

    def step(latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        timesteps = t.expand(latents.shape[0])
        output = predict(scheduler.scale_model_input(latents, t), timesteps)
        mean, std = ddim_step(scheduler, output, timesteps, latents, eta)
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

    def run(latents: torch.Tensor) -> torch.Tensor:
        decoded = vae.decode(latents.to(dtype) / vae.config.scaling_factor).sample
        return (decoded.float() / 2 + 0.5).clamp(0, 1)

    return torch.utils.checkpoint.checkpoint(run, latents, use_reentrant=False) if checkpoint else run(latents)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
    """VAE-decode latents (B, C, h, w) to images (B, 3, H, W) in [0, 1], fp32, in chunks to bound memory."""
    return torch.cat([decode(vae, chunk) for chunk in latents.split(chunk_size)])
