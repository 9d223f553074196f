"""DDPO's JPEG (in)compressibility rewards: the size of the image saved as JPEG, quality 95, in kB."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

JPEG_QUALITY = 95


def jpeg_size_kb(images: torch.Tensor) -> torch.Tensor:
    """JPEG size in kB (B,) of images (B, 3, H, W) in [0, 1], encoded as 8-bit RGB at quality 95."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegCompressibility:
    """Reward = -size: favours images that compress well (smooth, flat)."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return -jpeg_size_kb(images)


class JpegIncompressibility:
    """Reward = +size: favours detailed, high-frequency images."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return jpeg_size_kb(images)


def make_compressibility(device: torch.device, dtype: torch.dtype) -> JpegCompressibility:
    return JpegCompressibility()


def make_incompressibility(device: torch.device, dtype: torch.dtype) -> JpegIncompressibility:
    return JpegIncompressibility()
