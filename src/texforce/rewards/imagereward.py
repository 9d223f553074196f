"""ImageReward v1.0 (Xu et al. 2023) on transformers' BLIP building blocks, with a converter for ImageReward.pt.

The reference (`ImageReward/ImageReward.py`, `score`) runs, one image at a time:

1. BLIP ViT-L/16 on the 224px image → image tokens (B, 197, 1024);
2. the BLIP BERT text encoder on the prompt (35 WordPiece tokens) with cross-attention to those tokens;
3. the aesthetic-style MLP head (`MLPHead`) on the [CLS] state → r, reported as (r - mean) / std.

`ImageRewardModel` is the same computation on `BlipVisionModel` and `BlipTextModel` (which is a port of
BLIP's `med.py`), for whole batches. `convert_imagereward_state_dict` maps the official keys; those the
score does not use (the BLIP ITC projections `blip.vision_proj`, `blip.text_proj`) are dropped.
tests/test_rewards_imagereward.py checks outputs against the reference modules on a random tiny
model and every key of the real checkpoint layout.

Key mapping for the vision tower (`blip.visual_encoder.` → `visual_encoder.`): `cls_token`,
`pos_embed`, `patch_embed.proj` → `embeddings.{class_embedding, position_embedding, patch_embedding}`;
`blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp}` → `encoder.layers.{i}.{layer_norm1, self_attn.qkv,
self_attn.projection, layer_norm2, mlp}`; `norm` → `post_layernorm`. The text tower's names are identical.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig
from transformers.models.blip.modeling_blip import BlipVisionModel
from transformers.models.blip.modeling_blip_text import BlipTextModel

from texforce.reward_fn import DifferentiableReward, at_least_float32
from texforce.rewards.clip import DEFAULT_BATCH_SIZE, MLPHead
from texforce.rewards.preprocess import ImageTransform
from texforce.rewards.weights import WeightFile, locate_weight

IMAGEREWARD_V1 = WeightFile("imagereward/ImageReward.pt", "THUDM/ImageReward", ("ImageReward.pt",))
BERT_VOCAB = WeightFile("imagereward/bert-base-uncased-vocab.txt", "google-bert/bert-base-uncased", ("vocab.txt",))
IMAGEREWARD_MAX_LENGTH = 35
REWARD_MEAN = 0.16717362830052426  # ImageReward.mean / .std: the reward's statistics on its training set
REWARD_STD = 1.0333394966054072

_USED = ("blip.visual_encoder.", "blip.text_encoder.", "mlp.")
_POSITION_IDS = "blip.text_encoder.embeddings.position_ids"  # a buffer, rebuilt by `load_imagereward_model`
_VISION_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_VISION_BLOCK = {
    "norm1": "layer_norm1",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VISION_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


def build_blip_large_configs() -> tuple[BlipVisionConfig, BlipTextConfig]:
    """ImageReward's BLIP: ViT-L/16 at 224px (LayerNorm eps 1e-6) and BLIP's `med_config.json` BERT."""
    vision = BlipVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=16,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )
    text = BlipTextConfig(
        vocab_size=30524,
        hidden_size=768,
        encoder_hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=512,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        is_decoder=True,  # transformers builds the cross-attention layers only for decoder configs
    )
    return vision, text


class ImageRewardModel(nn.Module):
    """BLIP image tower → BERT with cross-attention → MLP on [CLS]; returns the raw reward r (B,)."""

    def __init__(self, vision_config: BlipVisionConfig, text_config: BlipTextConfig) -> None:
        super().__init__()
        self.visual_encoder = BlipVisionModel(vision_config)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = MLPHead(text_config.hidden_size)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image_embeds = self.visual_encoder(pixel_values=pixel_values).last_hidden_state  # (B, 1 + P, D_v)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        hidden = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            is_decoder=False,  # bidirectional self-attention, as BLIP's encoder in "multimodal" mode
        ).last_hidden_state  # (B, T, D_t)
        return self.mlp(hidden[:, 0])


def convert_imagereward_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map official ImageReward.pt keys to `ImageRewardModel`'s.

    Keys outside the three modules the score uses are skipped, as the reference skips them (it loads
    with `strict=False`); an unknown key inside the vision tower raises `KeyError`. Whether every
    needed key is present is checked by `load_state_dict(strict=True)` in `load_imagereward_model`.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(_USED) or key == _POSITION_IDS:
            continue
        if key.startswith("blip.text_encoder."):
            converted[key.removeprefix("blip.")] = value
        elif key.startswith("mlp."):
            converted[key] = value
        elif key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            if name in _VISION_TOP:
                converted[f"visual_encoder.{_VISION_TOP[name]}"] = value
            elif (match := _VISION_BLOCK_KEY.match(name)) and match.group(2) in _VISION_BLOCK:
                index, part, kind = match.groups()
                converted[f"visual_encoder.encoder.layers.{index}.{_VISION_BLOCK[part]}.{kind}"] = value
            else:
                raise KeyError(f"unknown ImageReward vision key {key!r}")
    return converted


def build_blip_tokenizer(vocab_file: Path) -> BertTokenizer:
    """bert-base-uncased WordPiece plus BLIP's two extra tokens ([DEC] = 30522, [ENC] = 30523)."""
    tokenizer = BertTokenizer(vocab=str(vocab_file))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward(DifferentiableReward):
    """The ImageReward score (r - mean) / std for a batch of images and prompts."""

    def __init__(
        self, model: ImageRewardModel, tokenizer: BertTokenizer, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.transform = ImageTransform(size=model.visual_encoder.config.image_size, mode="crop_round")
        self.batch_size = batch_size

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        parameter = next(self.model.parameters())
        pixel_values = self.transform(at_least_float32(images.to(parameter.device)))
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=IMAGEREWARD_MAX_LENGTH,
            return_tensors="pt",
        ).to(parameter.device)
        raw = self.model(pixel_values.to(parameter.dtype), tokens.input_ids, tokens.attention_mask)
        return ((at_least_float32(raw) - REWARD_MEAN) / REWARD_STD).to(images.device)


def load_imagereward_model(path: Path, device: torch.device, dtype: torch.dtype) -> ImageRewardModel:
    """`ImageRewardModel` with the official weights (ImageReward.pt, a plain state dict)."""
    state_dict = convert_imagereward_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    with torch.device("meta"):
        model = ImageRewardModel(*build_blip_large_configs())
    model.load_state_dict(state_dict, strict=True, assign=True)
    embeddings = model.text_encoder.embeddings  # its position_ids buffer is not saved: rebuild it
    embeddings.position_ids = torch.arange(embeddings.position_embeddings.num_embeddings).expand((1, -1))
    return model.to(device, dtype).eval()


def make_imagereward(device: torch.device, dtype: torch.dtype) -> ImageReward:
    model = load_imagereward_model(locate_weight(IMAGEREWARD_V1), device, dtype)
    return ImageReward(model, build_blip_tokenizer(locate_weight(BERT_VOCAB)))
