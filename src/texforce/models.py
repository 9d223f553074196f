"""Base models: load a Stable Diffusion pipeline (hub id, local folder or a built-in), freeze it, add LoRA.

The frozen parts are kept in half precision on a GPU (bf16 or fp16) and in fp32 on the CPU; trainable
LoRA weights are always fp32, as diffusers' own LoRA training scripts keep them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig as PeftLoraConfig
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from texforce.config import LoraConfig, ModelConfig
from texforce.errors import TexforceError
from texforce.tokenizer import build_clip_tokenizer

TINY_RANDOM = "texforce/tiny-random"
WORLD = "texforce/world"  # the offline world's own Stable Diffusion, shipped in the package
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TexforceError(f"model.device is {name!r} but no CUDA GPU is available; use model.device=cpu")
    return device


def frozen_dtype(name: str, device: torch.device) -> torch.dtype:
    """Half precision on a GPU as configured; always fp32 on the CPU (half matmuls there are slow or absent)."""
    return DTYPES[name] if device.type == "cuda" else torch.float32


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


def load_pipeline(base: str, revision: str | None = None) -> StableDiffusionPipeline:
    """Load a `StableDiffusionPipeline` from a hub id, a local folder or a built-in name, in fp32 on the CPU.

    Built-ins: `texforce/world` (the offline world's model), `texforce/tiny-random` (a few MB, random),
    `texforce/sd15-random`, `texforce/sd21-random` (true architectures, random weights).
    """
    if base == TINY_RANDOM:
        return build_tiny_pipeline()
    if base == WORLD:
        from texforce.world import MODEL_DIR

        base = str(MODEL_DIR)
    if base in RANDOM_ARCHITECTURES:
        return build_sd_pipeline(RANDOM_ARCHITECTURES[base])
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise TexforceError(f"{base} is not a diffusers pipeline folder (no model_index.json in it)")
        source = str(path)
    else:
        source = base
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, revision=revision, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as error:
        if path.exists():
            raise TexforceError(f"cannot load the pipeline in {base}: {error}".replace("\n", " ")) from None
        from huggingface_hub.constants import HF_HUB_CACHE

        raise TexforceError(
            f"base model {base!r} is neither a local folder nor in the Hugging Face cache ({HF_HUB_CACHE}) "
            f"and cannot be downloaded here{' (HF_HUB_OFFLINE=1)' if os.environ.get('HF_HUB_OFFLINE') else ''}; "
            f"on a machine with internet run `hf download {base}` (then copy the cache), "
            f"or pass a local folder saved with `pipe.save_pretrained(folder)`"
        ) from None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def prepare_pipeline(config: ModelConfig, device: torch.device) -> StableDiffusionPipeline:
    """Load the base pipeline, freeze every weight, and move it to `device` in its frozen dtype."""
    pipe = load_pipeline(config.base, config.revision)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    dtype = frozen_dtype(config.dtype, device)
    pipe.to(device=device, dtype=None if dtype == pipe.unet.dtype else dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def peft_lora_config(lora: LoraConfig) -> PeftLoraConfig:
    """The peft `LoraConfig` for one of our adapter configs."""
    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        init_lora_weights="gaussian" if lora.init == "gaussian" else True,
        target_modules=list(lora.target_modules),
        lora_dropout=0.0,
    )


def add_lora(module: torch.nn.Module, lora: LoraConfig, seed: int) -> list[torch.nn.Parameter]:
    """Add a trainable fp32 LoRA adapter to `module` (text encoder or U-Net); return its parameters.

    The seed fixes the adapter's initialisation so that a run is reproducible from its config alone.
    """
    devices = {p.device for p in module.parameters()}
    with torch.random.fork_rng(devices=[d for d in devices if d.type == "cuda"]):
        torch.manual_seed(seed)
        try:
            module.add_adapter(peft_lora_config(lora))
        except ValueError as error:
            raise TexforceError(f"cannot add LoRA to {type(module).__name__}: {error}") from None
    cast_training_params(module, dtype=torch.float32)
    return [p for p in module.parameters() if p.requires_grad]
