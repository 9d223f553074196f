"""Grids carry each image's prompt and score: a caption strip under every tile, also kept as the PNG's text."""

import numpy as np
import torch
from PIL import Image, ImageFont

from texforce.images import (
    CAPTION_FONT_SIZE,
    CAPTION_LINES,
    CAPTION_PADDING,
    MIN_CAPTIONED_SIDE,
    _wrap,
    caption,
    make_grid,
    save_png,
)


def test_caption_puts_label_and_scores_before_the_prompt():
    assert caption("two red circles", [0.625, -1.5], "base") == "base\n0.625 | -1.500\ntwo red circles"
    assert caption("two red circles") == "two red circles"


def test_captioned_grid_draws_a_strip_under_each_tile_and_keeps_the_text(tmp_path):
    images = torch.zeros(3, 3, 32, 32)  # black tiles: any dark pixel below them is caption ink
    captions = [caption(f"prompt {i}", [i / 10]) for i in range(3)]
    grid = make_grid(images, columns=3, captions=captions)
    side = MIN_CAPTIONED_SIDE  # small tiles are enlarged so that a caption fits
    assert grid.width == 3 * side and grid.height > side
    strips = np.asarray(grid)[side:]  # the caption strips, white with black text
    assert all((strips[:, i * side : (i + 1) * side] < 128).any() for i in range(3))
    save_png(grid, tmp_path / "grid.png")
    described = Image.open(tmp_path / "grid.png").text["Description"]
    assert described == "0.000 · prompt 0\n0.100 · prompt 1\n0.200 · prompt 2"


def test_long_captions_are_wrapped_to_the_tile_and_cut_with_an_ellipsis():
    words = " ".join(f"word{i}" for i in range(60))
    grid = make_grid(torch.ones(2, 3, 128, 128), columns=2, captions=[words, "short"])
    line_height = CAPTION_FONT_SIZE + 3
    assert grid.size[1] == 128 + CAPTION_LINES * line_height + 2 * CAPTION_PADDING  # at most CAPTION_LINES lines
    font = ImageFont.load_default(size=CAPTION_FONT_SIZE)
    lines = _wrap(words, font, 122)
    assert len(lines) == CAPTION_LINES and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 122 for line in lines)
    assert _wrap("x" * 200, font, 122)[0].endswith("…")  # a word longer than the tile is cut too


def test_grid_without_captions_is_the_bare_tiles(tmp_path):
    grid = make_grid(torch.rand(4, 3, 16, 16))
    assert grid.size == (32, 32) and "Description" not in grid.info
