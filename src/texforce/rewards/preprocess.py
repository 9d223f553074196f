"""Batched image preprocessing of the CLIP-family scorers, on tensors, on the scorer's device.

Every preference model here was trained at 224px with OpenAI CLIP's mean and std, bicubic resizing,
and one of three ways to make the image square:

- `crop`: shortest side → 224 (long side truncated), center crop with offset `(L - 224) // 2`;
  transformers' `CLIPImageProcessor` (CLIP, PickScore, the aesthetic predictor).
- `crop_round`: the same with offset `round((L - 224) / 2)`; torchvision `Resize` + `CenterCrop`
  (ImageReward).
- `pad`: longest side → 224 (short side rounded), centred black padding; HPS v2's `ResizeMaxSize`
  (the eval transform of its `light_augmentation` setting, used by `hpsv2/img_score.py`), which
  resizes the float tensor after `ToTensor`, so here too: one bicubic pass, no uint8 rounding.

The crop references work one PIL image at a time on uint8 pixels; this works on a float batch with torch's
antialiased bicubic (PIL's kernel, a = -0.5) in PIL's two passes. The two agree to within one 8-bit grey
level (see tests/test_rewards_preprocess.py). For square images, the usual case, the three geometries coincide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SquareMode = Literal["crop", "crop_round", "pad"]


@dataclass(frozen=True)
class ImageTransform:
    """Images (B, 3, H, W) in [0, 1] → normalised pixel values (B, 3, size, size), see the module table."""

    size: int = 224
    mode: SquareMode = "crop"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) after the resize step, computed as the reference computes it."""
        if self.mode == "pad":
            scale = self.size / max(height, width)
            return round(height * scale), round(width * scale)
        if height <= width:
            return self.size, int(self.size * width / height)
        return int(self.size * height / width), self.size

    def _offset(self, excess: int) -> int:
        return round(excess / 2) if self.mode == "crop_round" else excess // 2

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        height, width = self.resized_shape(*images.shape[-2:])
        if self.mode == "pad":  # HPS resizes the float tensor: torchvision's one interpolate, no clipping
            images = F.interpolate(images, size=(height, width), mode="bicubic", antialias=True)
        elif (height, width) != tuple(images.shape[-2:]):
            # PIL resizes in two passes, horizontal then vertical, clipping the bicubic overshoot to the
            # uint8 range after each; clipping only at the end would differ by several grey levels at edges.
            images = F.interpolate(images, size=(images.shape[-2], width), mode="bicubic", antialias=True)
            images = F.interpolate(images.clamp(0, 1), size=(height, width), mode="bicubic", antialias=True)
            images = images.clamp(0, 1)
        if self.mode == "pad":
            top, left = (self.size - height) // 2, (self.size - width) // 2
            padding = (left, self.size - width - left, top, self.size - height - top)
            images = F.pad(images, padding, value=0.0)
        else:
            top, left = self._offset(height - self.size), self._offset(width - self.size)
            images = images[..., top : top + self.size, left : left + self.size]
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std
