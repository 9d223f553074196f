"""The offline world's flow-matching model as a pipeline, `texforce/world-flow`: its shipped SD3 transformer on the
world model's CLIP text tower (with its contrastive projection, in both CLIP slots, no T5), tokenizer and VAE.
The transformer is trained by `texforce world pretrain-flow` (world/models/flow.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from safetensors.torch import load_file
from transformers import CLIPTextModelWithProjection
from transformers.utils import logging as transformers_logging

from texforce.errors import TexforceError
from texforce.tokenizer import build_clip_tokenizer
from texforce.world import CLIP_IMAGE_DIR, MODEL_DIR, WORLD_FLOW_DIR
from texforce.world.clip import TEXT_PROJECTION_FILE


def world_text_encoder() -> CLIPTextModelWithProjection:
    """The world CLIP's text tower with its contrastive projection (pooled → `text_embeds`), fp32, frozen."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the projection is not in the pipeline's file: loaded just below
    try:
        encoder = CLIPTextModelWithProjection.from_pretrained(MODEL_DIR / "text_encoder", torch_dtype=torch.float32)
    finally:
        transformers_logging.set_verbosity(verbosity)
    projection = load_file(str(CLIP_IMAGE_DIR / TEXT_PROJECTION_FILE))["text_projection.weight"]
    encoder.text_projection.weight.data.copy_(projection.float())
    return encoder.eval().requires_grad_(False)


def world_vae() -> AutoencoderKL:
    """The world VAE, with the `shift_factor` (0) SD3's pipeline reads."""
    vae = AutoencoderKL.from_pretrained(MODEL_DIR / "vae", torch_dtype=torch.float32)
    vae.register_to_config(shift_factor=0.0)
    return vae.eval().requires_grad_(False)


def assemble(transformer: SD3Transformer2DModel) -> StableDiffusion3Pipeline:
    """A `StableDiffusion3Pipeline` of `transformer` and the world's text tower (twice), tokenizer and VAE."""
    tokenizer = build_clip_tokenizer(world_text_encoder_length())
    return StableDiffusion3Pipeline(
        transformer=transformer.eval().requires_grad_(False),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=world_vae(),
        text_encoder=world_text_encoder(),
        tokenizer=tokenizer,
        text_encoder_2=world_text_encoder(),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def world_text_encoder_length() -> int:
    return json.loads((MODEL_DIR / "text_encoder" / "config.json").read_text())["max_position_embeddings"]


def load_world_flow(folder: str | Path | None = None) -> StableDiffusion3Pipeline:
    """`texforce/world-flow`: the shipped transformer (or the one in `folder`) on the world's shared parts."""
    folder = Path(folder or WORLD_FLOW_DIR)
    if not (folder / "transformer" / "config.json").is_file():
        raise TexforceError(
            f"texforce/world-flow has no transformer in {folder}; build it with "
            "`texforce world pretrain-flow --out src/texforce/world/assets/world_flow`"
        )
    transformer = SD3Transformer2DModel.from_pretrained(folder / "transformer", torch_dtype=torch.float32)
    return assemble(transformer)
