"""Stable Diffusion pipelines built from configs, without any download: the schedule, the assembly of parts,
tiny random SD and SDXL models for tests, and the true SD 1.5 / 2.1 / SDXL architectures with random weights for
benchmarks. `BUILT_IN` names them for `model.base`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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


def assemble_xl_pipeline(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
) -> StableDiffusionXLPipeline:
    """A `StableDiffusionXLPipeline` of these parts with the real CLIP tokenizers (CLIP's, and OpenCLIP's padded with
    "!") and SD's DDIM schedule, without the invisible watermark."""
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=sd_ddim_scheduler(),
        add_watermarker=False,
    )


def _clip_text_config(**sizes: object) -> CLIPTextConfig:
    """A CLIP text tower of these sizes with CLIP's vocabulary, 77 positions and special tokens."""
    specials = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **specials, **sizes)


def _tiny_text_config(hidden_size: int, **extra: object) -> CLIPTextConfig:
    return _clip_text_config(
        hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **extra
    )


def _tiny_vae(image_size: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=image_size,
    )


_TINY_UNET = dict(
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32,
)


def build_tiny_pipeline(seed: int = 0, image_size: int = 64, cross_attention_dim: int = 32) -> StableDiffusionPipeline:
    """A few-MB Stable Diffusion of the true architecture with random weights and the real CLIP tokenizer.

    Latents are image_size/2 on a side, 4 channels. Used by tests and as a built-in base model
    (`texforce/tiny-random`); the same seed always gives the same weights.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=image_size // 2, cross_attention_dim=cross_attention_dim, attention_head_dim=8, **_TINY_UNET
    )
    vae = _tiny_vae(image_size)
    text_encoder = CLIPTextModel(_tiny_text_config(cross_attention_dim))
    return assemble_pipeline(unet, vae, text_encoder)


def build_tiny_sdxl_pipeline(seed: int = 0, image_size: int = 64) -> StableDiffusionXLPipeline:
    """A few-MB SDXL of the true architecture (two text encoders, pooled embedding and size/crop time ids added to
    the time embedding) with random weights and the real tokenizers; `texforce/tiny-sdxl-random`."""
    torch.manual_seed(seed)
    hidden, time_dim = 32, 8
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        cross_attention_dim=2 * hidden,  # the two encoders' hidden states side by side
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + hidden,  # 6 time ids + the pooled embedding
        **_TINY_UNET,
    )
    vae = _tiny_vae(image_size)
    text_encoder = CLIPTextModel(_tiny_text_config(hidden))
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(hidden, projection_dim=hidden))
    return assemble_xl_pipeline(unet, vae, text_encoder, text_encoder_2)


# Stable Diffusion architectures from their published configs, for random-weight benchmarks and checks.
_SD_TEXT = {
    "sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 hidden_act="quick_gelu", projection_dim=768),  # CLIP ViT-L/14, also SDXL's `text_encoder`
    "sd21": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 hidden_act="gelu", projection_dim=512),
    "sdxl_2": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   hidden_act="gelu", projection_dim=1280),  # OpenCLIP ViT-bigG/14, SDXL's `text_encoder_2`
}  # fmt: skip
_SD_UNET = {
    "sd15": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sd21": dict(
        sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True
    ),
}


def _sd_vae(image_size: int, **overrides: object) -> AutoencoderKL:
    """Stable Diffusion's VAE (the same architecture in SD 1.x, 2.x and SDXL)."""
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=image_size,
        **overrides,
    )


def build_sd_pipeline(architecture: str, seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion 1.x (`sd15`: 512², CLIP ViT-L/14) or 2.1 (`sd21`: 768², OpenCLIP ViT-H, v-prediction)
    with random weights: the true architecture and compute, for benchmarks; no download."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_text_config(**_SD_TEXT[architecture]))
    unet = UNet2DConditionModel(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, **_SD_UNET[architecture]
    )
    vae = _sd_vae(unet.config.sample_size * 8)
    return assemble_pipeline(unet, vae, text_encoder, "v_prediction" if architecture == "sd21" else "epsilon")


def build_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL 1.0 base (1024², CLIP ViT-L/14 + OpenCLIP ViT-bigG/14, pooled embedding and time ids) with random
    weights, from its published configs: the true architecture and compute, for benchmarks; no download."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_text_config(**_SD_TEXT["sd15"]))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(**_SD_TEXT["sdxl_2"]))
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        use_linear_projection=True,
        cross_attention_dim=2048,  # 768 + 1280
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,  # 6 time ids × 256 + the 1280-d pooled embedding
    )
    vae = _sd_vae(1024, scaling_factor=0.13025, force_upcast=True)
    return assemble_xl_pipeline(unet, vae, text_encoder, text_encoder_2)


BUILT_IN: dict[str, Callable[[], DiffusionPipeline]] = {
    "texforce/tiny-random": build_tiny_pipeline,
    "texforce/tiny-sdxl-random": build_tiny_sdxl_pipeline,
    "texforce/sd15-random": partial(build_sd_pipeline, "sd15"),
    "texforce/sd21-random": partial(build_sd_pipeline, "sd21"),
    "texforce/sdxl-random": build_sdxl_pipeline,
}
