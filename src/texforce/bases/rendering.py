"""Render (prompt, seed) pairs through a stock diffusers pipeline in batches: one generator per image, so an image
is the same whichever batch it falls in, and no call holds more than `batch_size` images (twice that in the
denoiser under classifier-free guidance)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from texforce.bases.loading import call_options

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def render_images(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    batch_size: int | None,
    num_steps: int,
    guidance_scale: float,
    negative_prompt: str = "",
    eta: float = 0.0,
    max_sequence_length: int | None = None,
) -> torch.Tensor:
    """Images (len(prompts), 3, H, W) in [0, 1] on the CPU: prompt i drawn from seed seeds[i], `batch_size` per
    pipeline call (None: all in one call). The negative prompt is encoded, as in training (SDXL: not zeros); SD3's
    and FLUX's T5 length is `max_sequence_length` (see `bases.loading.call_options`)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    size = batch_size or len(prompts)
    images = []
    for start in range(0, len(prompts), size):
        chunk = list(prompts[start : start + size])
        output = pipe(
            chunk,
            num_inference_steps=num_steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds[start : start + size]],
            output_type="pt",
            **call_options(pipe, [negative_prompt] * len(chunk), eta, max_sequence_length),
        )
        images.append(output.images.float().cpu())  # (len(chunk), 3, H, W)
    return torch.cat(images)
