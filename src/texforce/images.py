"""Image tensors to pictures: PIL conversion, grids (optionally captioned with prompt and score), and PNG files
written atomically."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

CAPTION_LINES = 4  # at most; the last one is cut with "…"
CAPTION_FONT_SIZE = 11
CAPTION_PADDING = 3  # pixels around a caption
MIN_CAPTIONED_SIDE = 128  # smaller tiles are enlarged (nearest neighbour) so that a caption line holds a few words


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images (B, 3, H, W) in [0, 1] to 8-bit RGB PIL images."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(np.ascontiguousarray(array)) for array in pixels.numpy()]


def caption(prompt: str, scores: Sequence[float] = (), label: str = "") -> str:
    """A tile's caption: an optional label line, the scores (3 decimals, first so that cutting never hides them),
    then the prompt."""
    score_line = " | ".join(f"{score:.3f}" for score in scores)
    return "\n".join(part for part in (label, score_line, prompt) if part)


def make_grid(images: torch.Tensor, columns: int | None = None, captions: Sequence[str] | None = None) -> Image.Image:
    """Tile images (B, 3, H, W) into one picture, `columns` wide (default: as square as possible).

    With `captions` (one per image, lines split at "\\n") every tile gets a strip below it with its caption in PIL's
    default font, wrapped to the tile's width and cut after `CAPTION_LINES` lines; tiles narrower than
    `MIN_CAPTIONED_SIDE` are enlarged first. The captions are also kept, one per line, as the picture's
    `Description` (written into the PNG by `save_png`), so that scripts can read them back.
    """
    pictures = to_pil(images)
    if captions is not None and len(captions) != len(pictures):
        raise ValueError(f"{len(pictures)} images but {len(captions)} captions")
    columns = columns or math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / columns)
    width, height = pictures[0].size
    lines: list[list[str]] = [[] for _ in pictures]
    font, line_height = ImageFont.load_default(size=CAPTION_FONT_SIZE), CAPTION_FONT_SIZE + 3
    if captions is not None:
        scale = math.ceil(MIN_CAPTIONED_SIDE / width)
        if scale > 1:
            width, height = width * scale, height * scale
            pictures = [p.resize((width, height), Image.Resampling.NEAREST) for p in pictures]
        lines = [_wrap(text, font, width - 2 * CAPTION_PADDING) for text in captions]
    strip = max(map(len, lines)) * line_height + 2 * CAPTION_PADDING if captions is not None else 0
    grid = Image.new("RGB", (columns * width, rows * (height + strip)), "white")
    draw = ImageDraw.Draw(grid)
    for i, picture in enumerate(pictures):
        x, y = (i % columns) * width, (i // columns) * (height + strip)
        grid.paste(picture, (x, y))
        for k, line in enumerate(lines[i]):
            draw.text((x + CAPTION_PADDING, y + height + CAPTION_PADDING + k * line_height), line, "black", font)
    if captions is not None:
        grid.info["Description"] = "\n".join(" · ".join(text.splitlines()) for text in captions)
    return grid


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """`text` broken into lines of at most `width` pixels (at spaces, else mid-word), at most `CAPTION_LINES`."""
    lines = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                candidate = word
            line = candidate
        lines.append(line)
    cut = len(lines) > CAPTION_LINES
    lines = lines[:CAPTION_LINES]
    return [_fit(line, font, width, force_ellipsis=cut and i == len(lines) - 1) for i, line in enumerate(lines)]


def _fit(line: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, force_ellipsis: bool) -> str:
    """`line` cut to `width` pixels, ending in "…" when anything was cut."""
    if not force_ellipsis and font.getlength(line) <= width:
        return line
    while line and font.getlength(line + "…") > width:
        line = line[:-1]
    return line.rstrip() + "…"


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG via a temporary file and a rename, so no half-written picture is ever left behind. A
    `Description` in `image.info` (a captioned grid's captions) goes into the PNG's text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    info = PngInfo()
    if "Description" in image.info:
        info.add_itxt("Description", image.info["Description"])
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
