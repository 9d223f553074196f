"""CLIP-family rewards on `transformers.CLIPModel`: clipscore, pickscore, aesthetic (and hpsv2, see hps.py).

| reward      | weights                          | score                                                  |
|-------------|----------------------------------|--------------------------------------------------------|
| clipscore   | openai/clip-vit-large-patch14    | cos(image, text)                                       |
| pickscore   | yuvalkirstain/PickScore_v1       | exp(logit_scale) * cos(image, text)  (PickScore's own) |
| aesthetic   | CLIP-L + LAION MLP head          | MLP(image_embeds / |image_embeds|)  (≈ 1..10)          |
| hpsv2       | HPS v2/v2.1 (open_clip ViT-H-14) | cos(image, text)  (HPS's own, no logit scale)          |

Each is a `DifferentiableReward`: `differentiable` keeps the graph (direct reward backprop), `__call__` scores
under `torch.no_grad` in mini-batches of `batch_size`; both in the dtype the scorer was built with (every command:
fp32, `rewards.REWARD_DTYPE`), preprocessing in fp32 on the scorer's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPModel

from texforce.reward_fn import DifferentiableReward, at_least_float32
from texforce.rewards.preprocess import ImageTransform
from texforce.rewards.weights import WeightFile, locate_weight
from texforce.tokenizer import build_clip_tokenizer

CLIP_L14 = WeightFile("clip-vit-large-patch14/", "openai/clip-vit-large-patch14", ("config.json", "model.safetensors"))
PICKSCORE_V1 = WeightFile("PickScore_v1/", "yuvalkirstain/PickScore_v1")
AESTHETIC_HEAD = WeightFile(
    "aesthetic/aesthetic-model.pth", "trl-lib/ddpo-aesthetic-predictor", ("aesthetic-model.pth",)
)
CLIP_CONTEXT_LENGTH = 77
DEFAULT_BATCH_SIZE = 16


class MLPHead(nn.Module):
    """The LAION aesthetic predictor head (also ImageReward's): five Linear layers, no activations.

    Parameter names (`layers.0/2/4/6/7`) match the published state dicts; the dropouts keep the indices.
    """

    def __init__(self, in_features: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


class CLIPEmbedder:
    """L2-normalised image and text embeddings of a `CLIPModel`, batched and on the model's device."""

    def __init__(self, model: CLIPModel, transform: ImageTransform | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.transform = transform or ImageTransform()
        self.tokenizer = build_clip_tokenizer(CLIP_CONTEXT_LENGTH)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] → unit embeddings (B, D)."""
        pixel_values = self.transform(at_least_float32(images.to(self.device))).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        embeds = self.model.visual_projection(pooled)
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts → unit embeddings (B, D); 77 tokens, truncated, pooled at the end-of-text token."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=CLIP_CONTEXT_LENGTH,
            truncation=True,
            return_tensors="pt",
        )
        # No padding mask: CLIP's text tower is causal and pools at the first end-of-text token, so the
        # padding after it never reaches the pooled output (open_clip passes no mask either).
        pooled = self.model.text_model(input_ids=tokens.input_ids.to(self.device)).pooler_output
        embeds = self.model.text_projection(pooled)
        return embeds / embeds.norm(dim=-1, keepdim=True)


class CLIPSimilarityReward(DifferentiableReward):
    """`scale * cos(image, text)`; with `use_logit_scale`, scale = exp(logit_scale) (PickScore)."""

    def __init__(
        self, embedder: CLIPEmbedder, use_logit_scale: bool = False, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        self.embedder = embedder
        self.use_logit_scale = use_logit_scale
        self.batch_size = batch_size

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        cosine = at_least_float32((self.embedder.embed_images(images) * self.embedder.embed_texts(prompts)).sum(-1))
        if self.use_logit_scale:
            cosine = self.embedder.model.logit_scale.exp() * cosine
        return cosine.to(images.device)


class AestheticReward(DifferentiableReward):
    """LAION aesthetic predictor v2: `MLPHead` on the unit CLIP ViT-L/14 image embedding. Ignores prompts."""

    def __init__(self, embedder: CLIPEmbedder, head: MLPHead, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.embedder = embedder
        self.head = head.eval().requires_grad_(False).to(embedder.device, embedder.dtype)
        self.batch_size = batch_size

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return at_least_float32(self.head(self.embedder.embed_images(images))).to(images.device)


def load_clip_model(path: Path, device: torch.device, dtype: torch.dtype) -> CLIPModel:
    """A `CLIPModel` from a local `save_pretrained` folder, in eval mode on `device` in `dtype`."""
    return CLIPModel.from_pretrained(path, dtype=dtype).to(device).eval()


def load_mlp_head(path: Path) -> MLPHead:
    """The aesthetic MLP head from its `.pth` state dict (trl-lib or LAION's `sac+logos+ava1-l14-linearMSE`)."""
    head = MLPHead()
    head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return head


def make_clipscore(device: torch.device, dtype: torch.dtype) -> CLIPSimilarityReward:
    return CLIPSimilarityReward(CLIPEmbedder(load_clip_model(locate_weight(CLIP_L14), device, dtype)))


def make_pickscore(device: torch.device, dtype: torch.dtype) -> CLIPSimilarityReward:
    model = load_clip_model(locate_weight(PICKSCORE_V1), device, dtype)
    return CLIPSimilarityReward(CLIPEmbedder(model), use_logit_scale=True)


def make_aesthetic(device: torch.device, dtype: torch.dtype) -> AestheticReward:
    head = load_mlp_head(locate_weight(AESTHETIC_HEAD))
    return AestheticReward(CLIPEmbedder(load_clip_model(locate_weight(CLIP_L14), device, dtype)), head)
