"""SD3 / SD3.5 and FLUX.1 pipelines built from configs, without any download: tiny random ones for tests and the
true architectures with random weights for benchmarks and memory sizing. `FLOW_BUILT_IN` names them for
`model.base`.

Both families condition on CLIP and T5. T5's SentencePiece model cannot be shipped, so these built-ins tokenize T5's
input with `build_t5_standin_tokenizer` (T5's special ids, not T5's pieces); a real checkpoint loads its own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from texforce.bases.sd import _SD_TEXT, _clip_text_config, _tiny_text_config
from texforce.tokenizer import T5_VOCAB_SIZE, build_clip_tokenizer, build_t5_standin_tokenizer

# The VAEs' latent normalisation, `latents * scaling_factor` after subtracting `shift_factor` (vae/config.json)
SD3_VAE_FACTORS = dict(scaling_factor=1.5305, shift_factor=0.0609)
FLUX_VAE_FACTORS = dict(scaling_factor=0.3611, shift_factor=0.1159)
LATENT_CHANNELS = 16  # SD3's and FLUX.1's VAEs


def sd3_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """SD3's and SD3.5's flow-matching schedule: a fixed shift of 3 (scheduler/scheduler_config.json)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def flux_scheduler(dynamic: bool = True) -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's schedule (`dynamic`: the shift follows the image's token count, `mu` from 0.5 at 256 tokens to
    1.15 at 4096) or FLUX.1-schnell's (no shift), as in their scheduler/scheduler_config.json."""
    sizes = dict(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0 if dynamic else 1.0, use_dynamic_shifting=dynamic, **sizes
    )


def _t5_config(d_model: int, **sizes: object) -> T5Config:
    """A T5 v1.1 encoder of these sizes with T5's vocabulary and special ids and its gated-GELU feed-forward."""
    specials = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    t5 = dict(vocab_size=T5_VOCAB_SIZE, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return T5Config(d_model=d_model, **t5, **specials, **sizes)


def _tiny_t5(d_model: int) -> T5EncoderModel:
    return T5EncoderModel(
        _t5_config(
            d_model,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            dropout_rate=0.0,
        )
    )


# T5 v1.1 XXL's encoder (google/t5-v1_1-xxl), SD3's `text_encoder_3` and FLUX.1's `text_encoder_2`
_T5_XXL = dict(d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
               relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6)  # fmt: skip


def _flow_vae(image_size: int, factors: dict[str, float], **sizes: object) -> AutoencoderKL:
    """SD3's / FLUX.1's VAE: 16 latent channels, no quant convs, their latent scaling and shift; SD's (SDXL's)
    block layout unless `sizes` say otherwise. Latents are image_size / 2**(len(block_out_channels) - 1) a side."""
    layout = {
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        **sizes,
    }
    return AutoencoderKL(
        latent_channels=LATENT_CHANNELS,
        use_quant_conv=False,
        use_post_quant_conv=False,
        sample_size=image_size,
        **factors,
        **layout,
    )


# four blocks: the real VAEs' 8× downsampling (32-pixel images give 4×4 latents), at a few hundred kB
_TINY_VAE = dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8)


def _eval(*modules: torch.nn.Module) -> None:
    """Put built modules in inference mode, as `from_pretrained` returns them (T5 has dropout)."""
    for module in modules:
        module.eval()


def assemble_sd3_pipeline(
    transformer: SD3Transformer2DModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModelWithProjection,
    text_encoder_2: CLIPTextModelWithProjection,
    text_encoder_3: T5EncoderModel,
    t5_length: int,
) -> StableDiffusion3Pipeline:
    """A `StableDiffusion3Pipeline` of these parts with the real CLIP tokenizers (CLIP's, and OpenCLIP's padded
    with "!"), the stand-in T5 tokenizer (`t5_length` tokens) and SD3's schedule."""
    _eval(transformer, vae, text_encoder, text_encoder_2, text_encoder_3)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=sd3_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=build_clip_tokenizer(pad_token="!"),
        text_encoder_3=text_encoder_3,
        tokenizer_3=build_t5_standin_tokenizer(t5_length),
    )


def assemble_flux_pipeline(
    transformer: FluxTransformer2DModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    text_encoder_2: T5EncoderModel,
    t5_length: int,
) -> FluxPipeline:
    """A `FluxPipeline` of these parts with the real CLIP tokenizer, the stand-in T5 tokenizer (`t5_length`
    tokens) and FLUX.1-dev's schedule when the transformer embeds the guidance scale, schnell's when not."""
    _eval(transformer, vae, text_encoder, text_encoder_2)
    return FluxPipeline(
        scheduler=flux_scheduler(dynamic=transformer.config.guidance_embeds),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=build_t5_standin_tokenizer(t5_length),
        transformer=transformer,
    )


def build_tiny_sd3_pipeline(seed: int = 0, image_size: int = 64) -> StableDiffusion3Pipeline:
    """A ~30 MB SD3.5 of the true architecture (MMDiT with QK-norm and a dual-attention block; two CLIPs with
    projection and a T5 encoder; a 16-channel VAE with 8× downsampling) with random weights;
    `texforce/tiny-sd3-random`. The same seed always gives the same weights.

    The CLIPs have different widths (32 and 48) and T5 a larger one (96), so the pipeline's concatenation of the
    CLIP states and their zero-padding to T5's width are both exercised. `image_size` must be a multiple of 16.
    """
    torch.manual_seed(seed)
    clip_widths, t5_width, patch = (32, 48), 96, 2
    sample_size = image_size // 8
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=patch,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=t5_width,  # the CLIP states are zero-padded to T5's width and put before T5's
        caption_projection_dim=32,  # = num_attention_heads × attention_head_dim, as the blocks need
        pooled_projection_dim=sum(clip_widths),  # the two CLIPs' projected pooled outputs side by side
        pos_embed_max_size=3 * sample_size // patch,  # as SD3's 192 for 128-latent images: up to 3× the side
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = _flow_vae(image_size, SD3_VAE_FACTORS, **_TINY_VAE)
    text_encoder = CLIPTextModelWithProjection(_tiny_text_config(clip_widths[0], projection_dim=clip_widths[0]))
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(clip_widths[1], projection_dim=clip_widths[1]))
    text_encoder_3 = _tiny_t5(t5_width)
    return assemble_sd3_pipeline(transformer, vae, text_encoder, text_encoder_2, text_encoder_3, t5_length=77)


def build_tiny_flux_pipeline(seed: int = 0, image_size: int = 64, guidance_embeds: bool = True) -> FluxPipeline:
    """A ~17 MB FLUX.1 of the true architecture (double- and single-stream blocks with 3-axis RoPE, 2×2 latent
    patches packed into tokens; CLIP's pooled output and T5's states; a 16-channel VAE with 8× downsampling) with
    random weights; `texforce/tiny-flux-random`. `guidance_embeds=True` embeds the guidance scale like
    FLUX.1-dev (with dev's resolution-dependent schedule), False is schnell-like (no embedding, no shift).
    `image_size` must be a multiple of 16 (8× VAE, then 2×2 patches).
    """
    torch.manual_seed(seed)
    clip_width, t5_width = 32, 64
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # a packed token is a 2×2 patch of latents
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_width,
        pooled_projection_dim=clip_width,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # RoPE over (text/unused, row, column), summing to attention_head_dim
    )
    vae = _flow_vae(image_size, FLUX_VAE_FACTORS, **_TINY_VAE)
    text_encoder = CLIPTextModel(_tiny_text_config(clip_width))
    text_encoder_2 = _tiny_t5(t5_width)
    return assemble_flux_pipeline(transformer, vae, text_encoder, text_encoder_2, t5_length=77)


# SD3 / SD3.5 transformers from their published transformer/config.json (stabilityai/stable-diffusion-3-medium-
# diffusers, stable-diffusion-3.5-medium, stable-diffusion-3.5-large; -large-turbo has large's config)
_SD3_TRANSFORMER = {
    "sd3-medium": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192),
    "sd35-medium": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=384,
                        dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),  # MMDiT-X
    "sd35-large": dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192,
                       qk_norm="rms_norm"),
}  # fmt: skip
SD3_VARIANTS = tuple(_SD3_TRANSFORMER)
FLUX_VARIANTS = ("flux-dev", "flux-schnell")
SD3_T5_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length
FLUX_T5_LENGTH = {"flux-dev": 512, "flux-schnell": 256}  # as Black Forest Labs' reference code encodes them


def build_sd3_pipeline(variant: str, seed: int = 0, device: str | torch.device = "cpu") -> StableDiffusion3Pipeline:
    """SD3 Medium (`sd3-medium`), SD3.5 Medium (`sd35-medium`) or SD3.5 Large (`sd35-large`; Large Turbo has the
    same architecture) with random weights, from their published configs: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14
    with projections, T5 v1.1 XXL's encoder, the MMDiT(-X), SD3's VAE; 1024² images. For benchmarks; no download.

    Built in fp32 on `device`; `device="meta"` allocates nothing, for parameter counts and shapes.
    """
    if variant not in _SD3_TRANSFORMER:
        raise ValueError(f"unknown SD3 variant {variant!r}; one of {', '.join(SD3_VARIANTS)}")
    torch.manual_seed(seed)
    with torch.device(device):
        text_encoder = CLIPTextModelWithProjection(_clip_text_config(**_SD_TEXT["sd15"]))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(**_SD_TEXT["sdxl_2"]))
        text_encoder_3 = T5EncoderModel(_t5_config(4096, **_T5_XXL))
        transformer = SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            attention_head_dim=64,
            joint_attention_dim=4096,
            pooled_projection_dim=2048,  # 768 + 1280
            **_SD3_TRANSFORMER[variant],
        )
        vae = _flow_vae(1024, SD3_VAE_FACTORS)
    return assemble_sd3_pipeline(transformer, vae, text_encoder, text_encoder_2, text_encoder_3, SD3_T5_LENGTH)


def build_flux_pipeline(variant: str, seed: int = 0, device: str | torch.device = "cpu") -> FluxPipeline:
    """FLUX.1-dev (`flux-dev`: guidance embedding, resolution-dependent shift) or FLUX.1-schnell (`flux-schnell`)
    with random weights, from their published configs: CLIP ViT-L/14 (pooled), T5 v1.1 XXL's encoder, the 12B
    transformer (19 double- and 38 single-stream blocks), FLUX's VAE; 1024² images. For benchmarks; no download.

    Built in fp32 on `device`; `device="meta"` allocates nothing, for parameter counts and shapes.
    """
    if variant not in FLUX_VARIANTS:
        raise ValueError(f"unknown FLUX variant {variant!r}; one of {', '.join(FLUX_VARIANTS)}")
    torch.manual_seed(seed)
    with torch.device(device):
        text_encoder = CLIPTextModel(_clip_text_config(**_SD_TEXT["sd15"]))
        text_encoder_2 = T5EncoderModel(_t5_config(4096, **_T5_XXL))
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * LATENT_CHANNELS,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=variant == "flux-dev",
            axes_dims_rope=(16, 56, 56),
        )
        vae = _flow_vae(1024, FLUX_VAE_FACTORS)
    return assemble_flux_pipeline(transformer, vae, text_encoder, text_encoder_2, FLUX_T5_LENGTH[variant])


COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")


def parameter_counts(pipe: DiffusionPipeline) -> dict[str, int]:
    """Parameters of each model in the pipeline (tied weights once): works on the meta device."""
    counts = {}
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is not None:
            counts[name] = sum(p.numel() for p in module.parameters())
    return counts


# Published parameter counts (nn.Parameters) per variant and component, to check the built architectures against.
# A per-module profile of the stable-diffusion-3-medium-diffusers checkpoint (published with an inspection tool's
# docs) lists transformer 2,028,328,000, text_encoder 123,650,304, text_encoder_2 694,659,840 and text_encoder_3
# 4,762,310,656; open_clip's docs/model_profile.csv gives the same CLIP text towers as 123.65M and 694.66M.
_CLIP_L = 123_650_304  # CLIP ViT-L/14 text tower with its 768×768 projection
_CLIP_L_NO_PROJECTION = _CLIP_L - 768 * 768  # 123,060,480: FLUX's CLIPTextModel (and SD 1.x's)
_CLIP_BIGG = 694_659_840  # OpenCLIP ViT-bigG/14 text tower with its 1280×1280 projection
_T5_XXL_ENCODER = 4_762_310_656  # T5 v1.1 XXL's encoder
PUBLISHED_PARAMETERS: dict[str, dict[str, int]] = {
    "sd3-medium": {
        "transformer": 2_028_328_000,  # the profile above; the model card says "2 billion parameter"
        "text_encoder": _CLIP_L,
        "text_encoder_2": _CLIP_BIGG,
        "text_encoder_3": _T5_XXL_ENCODER,
    },
    # Stability AI's announcement ("Introducing Stable Diffusion 3.5") gives Medium 2.5 billion parameters; that
    # counts the 384² × 1536 = 226,492,416-entry fixed sin-cos position table, which diffusers keeps as a buffer:
    # a public audit of the released transformer file finds 2,469,663,936 elements in 909 tensors, less the table
    # 2,243,171,520 parameters.
    "sd35-medium": {
        "transformer": 2_469_663_936 - 384**2 * 1536,
        "text_encoder": _CLIP_L,
        "text_encoder_2": _CLIP_BIGG,
        "text_encoder_3": _T5_XXL_ENCODER,
    },
    "sd35-large": {
        "transformer": 8_100_000_000,  # the same announcement: Large (and Large Turbo) "8.1 billion parameters"
        "text_encoder": _CLIP_L,
        "text_encoder_2": _CLIP_BIGG,
        "text_encoder_3": _T5_XXL_ENCODER,
    },
    # FLUX.1 model cards: "a 12 billion parameter rectified flow transformer"; the hub's safetensors metadata of the
    # transformer files: dev 11,901,408,320, schnell 11,891,178,560 (no guidance embedder)
    "flux-dev": {
        "transformer": 11_901_408_320,
        "text_encoder": _CLIP_L_NO_PROJECTION,
        "text_encoder_2": _T5_XXL_ENCODER,
    },
    "flux-schnell": {
        "transformer": 11_891_178_560,
        "text_encoder": _CLIP_L_NO_PROJECTION,
        "text_encoder_2": _T5_XXL_ENCODER,
    },
}


FLOW_BUILT_IN: dict[str, Callable[[], DiffusionPipeline]] = {
    "texforce/tiny-sd3-random": build_tiny_sd3_pipeline,
    "texforce/tiny-flux-random": build_tiny_flux_pipeline,
    "texforce/sd3-medium-random": partial(build_sd3_pipeline, "sd3-medium"),
    "texforce/sd35-medium-random": partial(build_sd3_pipeline, "sd35-medium"),
    "texforce/sd35-large-random": partial(build_sd3_pipeline, "sd35-large"),
    "texforce/flux-dev-random": partial(build_flux_pipeline, "flux-dev"),
    "texforce/flux-schnell-random": partial(build_flux_pipeline, "flux-schnell"),
}
