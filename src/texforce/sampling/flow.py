"""with sigma = sigmas[i], sigma' = sigmas[i + 1], dt = sigma' - sigma < 0 and noise level a (here `eta`),
std_t = a * sqrt(sigma / (1 - sigma)) (at sigma = 1, sigmas[1] in the denominator), the step is Gaussian with
mean x + v dt + std_t^2 / (2 sigma) (x + (1 - sigma) v) dt and std std_t sqrt(-dt); a = 0 is the Euler step.

FLUX denoises packed 2×2 latent patches; `pack_flux_latents` and `unpack_flux_latents` convert, `flux_image_ids` are
the patches' positions.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


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
