"""The world's small CLIP: a `CLIPTextModel` text tower and a `CLIPVisionModelWithProjection` image tower.

The text tower becomes the pipeline's `text_encoder`; the image tower and the text projection are kept in
`assets/clip_image/` for the learned `world_clipscore` reward.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from texforce.errors import TexforceError
from texforce.files import make_safetensors_readable, save_safetensors
from texforce.tokenizer import VOCAB_SIZE, build_clip_tokenizer
from texforce.world import CLIP_IMAGE_DIR, MODEL_DIR

TEXT_PROJECTION_FILE = "text_projection.safetensors"


def build_text_encoder(hidden_size: int, num_layers: int, max_length: int) -> CLIPTextModel:
    """A small CLIP text tower over the full CLIP vocabulary, pooled at the end-of-text token."""
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 16),
        max_position_embeddings=max_length,
        projection_dim=hidden_size,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_image_encoder(hidden_size: int, num_layers: int, projection_dim: int) -> CLIPVisionModelWithProjection:
    """A small ViT image tower for 64×64 images (8×8 patches)."""
    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 32),
        image_size=64,
        patch_size=8,
        projection_dim=projection_dim,
    )
    return CLIPVisionModelWithProjection(config)


class WorldClip(nn.Module):
    """Both towers, the text projection and the learned temperature; embeddings are unit vectors."""

    def __init__(self, text_encoder: CLIPTextModel, image_encoder: CLIPVisionModelWithProjection) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        projection_dim = image_encoder.config.projection_dim
        self.text_projection = nn.Linear(text_encoder.config.hidden_size, projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP
        self.tokenizer = build_clip_tokenizer(text_encoder.config.max_position_embeddings)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, max_length), padded as the pipeline pads them."""
        return self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids

    def embed_token_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.text_encoder(input_ids=input_ids).pooler_output  # (B, hidden)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        return self.embed_token_ids(self.tokenize(prompts))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, D) of images (B, 3, 64, 64) in [0, 1]."""
        if images.shape[-2:] != (64, 64):
            images = F.interpolate(images, size=(64, 64), mode="bilinear", antialias=True)
        pixel_values = (images.to(self.image_encoder.dtype) - 0.5) / 0.5
        return F.normalize(self.image_encoder(pixel_values=pixel_values).image_embeds, dim=-1)

    def save_image_side(self, clip_dir: str | Path) -> None:
        """Write the image tower, the text projection and the temperature to `clip_dir` (fp16)."""
        clip_dir = Path(clip_dir)
        self.image_encoder.to(torch.float16).save_pretrained(clip_dir)
        self.image_encoder.float()
        tensors = {
            "text_projection.weight": self.text_projection.weight.detach().half().contiguous(),
            "logit_scale": self.logit_scale.detach().reshape(1).float(),
        }
        save_safetensors(tensors, clip_dir / TEXT_PROJECTION_FILE)
        make_safetensors_readable(clip_dir)  # the image tower's, written by transformers


def load_world_clip(model_dir: str | Path | None = None, clip_dir: str | Path | None = None) -> WorldClip:
    """The world CLIP in fp32 on the CPU, from the pipeline folder and the image-side folder."""
    model_dir, clip_dir = Path(model_dir or MODEL_DIR), Path(clip_dir or CLIP_IMAGE_DIR)
    for folder in (model_dir / "text_encoder", clip_dir):
        if not folder.is_dir():
            raise TexforceError(f"world CLIP folder {folder} is missing; run `texforce world pretrain`")
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder", torch_dtype=torch.float32)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(clip_dir, torch_dtype=torch.float32)
    clip = WorldClip(text_encoder, image_encoder)
    tensors = load_file(str(clip_dir / TEXT_PROJECTION_FILE))
    clip.text_projection.weight.data.copy_(tensors["text_projection.weight"].float())
    clip.logit_scale.data.copy_(tensors["logit_scale"][0])
    return clip.eval().requires_grad_(False)
