"""The world model's architectures: a small `AutoencoderKL`, a small `UNet2DConditionModel` and Stable Diffusion's
training noise schedule, sized for pre-training on 2 CPU cores (the CLIP towers are in clip.py)."""

from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel


def build_vae(channels: tuple[int, ...]) -> AutoencoderKL:
    """A small `AutoencoderKL`: 64×64×3 → 16×16×4 with three levels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def build_unet(channels: tuple[int, ...], cross_attention_dim: int) -> UNet2DConditionModel:
    """A small conditional U-Net on 16×16×4 latents; cross-attention at 8×8 and 4×4."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion's training schedule (scaled-linear betas 0.00085 → 0.012, 1000 steps)."""
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
