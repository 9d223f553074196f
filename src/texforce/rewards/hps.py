"""HPS v2 / v2.1 on `transformers.CLIPModel`, converted from its open_clip ViT-H-14 checkpoint by key mapping.

HPS (Wu et al. 2023) fine-tunes open_clip's ViT-H-14; its score is the cosine of the unit image and
text embeddings (`hpsv2/img_score.py`: the diagonal of `image_features @ text_features.T`), about 0.2-0.3.
open_clip itself is not needed: `convert_open_clip_state_dict` renames and reshapes the tensors into
`CLIPModel`'s layout, which computes the same function (tests/test_rewards_hps.py checks embeddings
against open_clip on a random tiny model and every key of the real ViT-H-14 layout).

Mapping (open_clip → transformers), for `visual.transformer` → `vision_model.encoder` and
`transformer` → `text_model.encoder`:
- `resblocks.{i}.attn.in_proj_{weight,bias}` (3W, …) → `layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}`
- `ln_1`, `ln_2`, `attn.out_proj`, `mlp.c_fc`, `mlp.c_proj` → `layer_norm1`, `layer_norm2`,
  `self_attn.out_proj`, `mlp.fc1`, `mlp.fc2`
- `visual.proj` and `text_projection` (W, E) are applied as `x @ proj`; transformers' Linear wants `.T`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from texforce.rewards.clip import CLIPEmbedder, CLIPSimilarityReward
from texforce.rewards.preprocess import ImageTransform
from texforce.rewards.weights import WeightFile, locate_weight

HPS_V2 = WeightFile("hpsv2/HPS_v2_compressed.pt", "xswu/HPSv2", ("HPS_v2_compressed.pt",))
HPS_V2_1 = WeightFile("hpsv2/HPS_v2.1_compressed.pt", "xswu/HPSv2", ("HPS_v2.1_compressed.pt",))
OPEN_CLIP_EOT_TOKEN_ID = 49407

_TOP_LEVEL = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)$")


def build_vit_h14_config() -> CLIPConfig:
    """open_clip's ViT-H-14 (HPS v2's backbone) as a `CLIPConfig`: exact GELU, LayerNorm eps 1e-5."""
    return CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "eos_token_id": OPEN_CLIP_EOT_TOKEN_ID,
        },
        vision_config={
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            "hidden_act": "gelu",
        },
        projection_dim=1024,
    )


def convert_open_clip_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip `CLIP` (ViT image tower, causal text tower) state dict to `CLIPModel`'s keys.

    Raises `KeyError` on a key it does not know, so a checkpoint of another layout fails loudly.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _TOP_LEVEL:
            converted[_TOP_LEVEL[key]] = value
        elif key in _TRANSPOSED:
            converted[_TRANSPOSED[key]] = value.T.contiguous()
        elif match := _BLOCK_KEY.match(key):
            visual, index, name, kind = match.groups()
            prefix = f"{'vision_model' if visual else 'text_model'}.encoder.layers.{index}"
            if name == "attn.in_proj":
                for proj, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    converted[f"{prefix}.self_attn.{proj}_proj.{kind}"] = chunk.contiguous()
            elif name in _BLOCK:
                converted[f"{prefix}.{_BLOCK[name]}.{kind}"] = value
            else:
                raise KeyError(f"unknown open_clip block parameter {key!r}")
        else:
            raise KeyError(f"unknown open_clip key {key!r}")
    return converted


def load_hps_model(path: Path, device: torch.device, dtype: torch.dtype) -> CLIPModel:
    """`CLIPModel` with HPS v2/v2.1 weights from the official `.pt` (a dict with a `state_dict` entry)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = convert_open_clip_state_dict(checkpoint.get("state_dict", checkpoint))
    with torch.device("meta"):
        model = CLIPModel(build_vit_h14_config())
    model.load_state_dict(state_dict, strict=True, assign=True)
    for embeddings in (model.vision_model.embeddings, model.text_model.embeddings):  # non-persistent buffers
        embeddings.position_ids = torch.arange(embeddings.position_embedding.num_embeddings).expand((1, -1))
    return model.to(device, dtype).eval()


def make_hps_reward(weight: WeightFile, device: torch.device, dtype: torch.dtype) -> CLIPSimilarityReward:
    model = load_hps_model(locate_weight(weight), device, dtype)
    return CLIPSimilarityReward(CLIPEmbedder(model, ImageTransform(mode="pad")))


def make_hpsv2(device: torch.device, dtype: torch.dtype) -> CLIPSimilarityReward:
    return make_hps_reward(HPS_V2, device, dtype)


def make_hpsv2_1(device: torch.device, dtype: torch.dtype) -> CLIPSimilarityReward:
    return make_hps_reward(HPS_V2_1, device, dtype)
