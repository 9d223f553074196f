"""Image tensors to pictures: PIL conversion, grids, and PNG files written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images (B, 3, H, W) in [0, 1] to 8-bit RGB PIL images."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(np.ascontiguousarray(array)) for array in pixels.numpy()]


def make_grid(images: torch.Tensor, columns: int | None = None) -> Image.Image:
    """Tile images (B, 3, H, W) into one picture, `columns` wide (default: as square as possible)."""
    pictures = to_pil(images)
    columns = columns or math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / columns)
    width, height = pictures[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, picture in enumerate(pictures):
        grid.paste(picture, ((i % columns) * width, (i // columns) * height))
    return grid


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG via a temporary file and a rename, so no half-written picture is ever left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
