"""Stable Diffusion pipelines built from configs, without any download: the schedule, the assembly of parts,
a tiny random model for tests, and the true SD 1.5 / 2.1 architectures with random weights for benchmarks.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from texforce.tokenizer import build_clip_tokenizer


def sd_ddim_scheduler(**overrides: object) -> DDIMScheduler:
    """Stable Diffusion's DDIM schedule (scaled-linear betas 0.00085 → 0.012, `steps_offset=1`), with overrides."""
    config = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        **overrides,
    }
    return DDIMScheduler(**config)


def assemble_pipeline(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    prediction_type: str = "epsilon",
    tokenizer: CLIPTokenizer | None = None,
) -> StableDiffusionPipeline:
    """A `StableDiffusionPipeline` of these parts with the real CLIP tokenizer (77 tokens unless given) and SD's
    DDIM schedule (`steps_offset=1`, so the last step keeps a positive variance and a finite log-probability)."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer or build_clip_tokenizer(),
        unet=unet,
        scheduler=sd_ddim_scheduler(prediction_type=prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(seed: int = 0, image_size: int = 64, cross_attention_dim: int = 32) -> StableDiffusionPipeline:
    """A few-MB Stable Diffusion of the true architecture with random weights and the real CLIP tokenizer.

    Latents are image_size/2 on a side, 4 channels. Used by tests and as a built-in base model
    (`texforce/tiny-random`); the same seed always gives the same weights.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=image_size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=cross_attention_dim,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    return assemble_pipeline(unet, vae, text_encoder)


# Stable Diffusion architectures from their published configs, for random-weight benchmarks and checks.
_SD_TEXT = {
    "sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 hidden_act="quick_gelu", projection_dim=768),
    "sd21": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 hidden_act="gelu", projection_dim=512),
}  # fmt: skip
_SD_UNET = {
    "sd15": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sd21": dict(
        sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True
    ),
}
RANDOM_ARCHITECTURES = {f"texforce/{name}-random": name for name in _SD_UNET}


def build_sd_pipeline(architecture: str, seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion 1.x (`sd15`: 512², CLIP ViT-L/14) or 2.1 (`sd21`: 768², OpenCLIP ViT-H, v-prediction)
    with random weights: the true architecture and compute, for benchmarks; no download."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                       pad_token_id=49407, **_SD_TEXT[architecture])
    )  # fmt: skip
    unet = UNet2DConditionModel(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, **_SD_UNET[architecture]
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=unet.config.sample_size * 8,
    )
    return assemble_pipeline(unet, vae, text_encoder, "v_prediction" if architecture == "sd21" else "epsilon")
