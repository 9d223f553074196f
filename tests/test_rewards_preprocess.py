"""Preprocessing of each scorer matches its reference: resize rule, crop/pad, constants, token lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPImageProcessorPil

from texforce.rewards.clip import CLIP_CONTEXT_LENGTH
from texforce.rewards.preprocess import CLIP_MEAN, CLIP_STD, ImageTransform
from texforce.tokenizer import build_clip_tokenizer

SHAPES = [(512, 512), (300, 400), (401, 299), (150, 120)]  # square, landscape, portrait (odd excess), upsampling
# One 8-bit grey level in normalised units is 1/255/0.27 ≈ 0.015. The references round the resized image
# to uint8 (mean error a quarter level ≈ 0.004); the float path does not. Allow that, and one level at most.
MAX_ABS, MEAN_ABS = 0.016, 0.005


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth image with edges (uint8 HWC): random noise alone would make bicubic rounding dominate."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], -1) * 100 + 128
    base[height // 3 : height // 2, width // 4 : width // 2] = 250
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _ours(array: np.ndarray, transform: ImageTransform) -> torch.Tensor:
    images = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    return transform(images)[0]


def _normalise(pil: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)
    return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def _torchvision_resize_center_crop(pil: Image.Image, size: int = 224) -> Image.Image:
    """torchvision `Resize(size, BICUBIC)` + `CenterCrop(size)` on a PIL image, as ImageReward runs them."""
    width, height = pil.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    pil = pil.resize((new_w, new_h), Image.BICUBIC)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return pil.crop((left, top, left + size, top + size))


def _hps_resize_max_size(array: np.ndarray, size: int = 224) -> torch.Tensor:
    """HPS v2's eval transform: `ToTensor`, `ResizeMaxSize(size, fill=0)`, `Normalize`.

    `ResizeMaxSize` resizes the float tensor with torchvision's `F.resize` (bicubic, antialiased, no
    clamping) to `round(side * size / longest)`, then zero-pads `(w // 2, h // 2, rest, rest)`.
    """
    pixels = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    height, width = pixels.shape[1:]
    scale = size / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    pixels = F.interpolate(pixels[None], size=(new_h, new_w), mode="bicubic", antialias=True)[0]
    pad_h, pad_w = size - new_h, size - new_w
    pixels = F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def _assert_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape == (3, 224, 224)
    diff = (ours - reference).abs()
    assert diff.max() < MAX_ABS and diff.mean() < MEAN_ABS, (diff.max().item(), diff.mean().item())


@pytest.mark.parametrize("shape", SHAPES)
def test_crop_mode_matches_transformers_clip_image_processor(shape: tuple[int, int]) -> None:
    """CLIP / PickScore / aesthetic: the openai/clip-vit-large-patch14 processor settings are the defaults."""
    array = _image(*shape)
    processor = CLIPImageProcessorPil()
    assert processor.size.shortest_edge == 224 and processor.crop_size.height == 224
    assert processor.resample == Image.BICUBIC
    assert tuple(processor.image_mean) == CLIP_MEAN and tuple(processor.image_std) == CLIP_STD
    reference = processor(images=Image.fromarray(array), return_tensors="pt").pixel_values[0]
    _assert_close(_ours(array, ImageTransform(mode="crop")), reference)


@pytest.mark.parametrize("shape", SHAPES)
def test_crop_round_mode_matches_torchvision_resize_center_crop(shape: tuple[int, int]) -> None:
    array = _image(*shape)
    reference = _normalise(_torchvision_resize_center_crop(Image.fromarray(array)))
    _assert_close(_ours(array, ImageTransform(mode="crop_round")), reference)


@pytest.mark.parametrize("shape", SHAPES)
def test_pad_mode_matches_hps_resize_max_size(shape: tuple[int, int]) -> None:
    array = _image(*shape)
    torch.testing.assert_close(_ours(array, ImageTransform(mode="pad")), _hps_resize_max_size(array))


def test_crop_offsets_differ_only_in_rounding() -> None:
    assert ImageTransform(mode="crop")._offset(3) == 1 and ImageTransform(mode="crop_round")._offset(3) == 2
    assert ImageTransform(mode="pad").resized_shape(401, 299) == (224, 167)


def test_transform_is_batched() -> None:
    images = torch.rand(4, 3, 300, 260)
    batched = ImageTransform()(images)
    torch.testing.assert_close(batched[2:3], ImageTransform()(images[2:3]))


def test_clip_tokens_are_77_long_with_start_and_end_of_text() -> None:
    tokenizer = build_clip_tokenizer(CLIP_CONTEXT_LENGTH)
    tokens = tokenizer(
        ["a photo of a hand", "word " * 100],
        padding="max_length",
        max_length=CLIP_CONTEXT_LENGTH,
        truncation=True,
        return_tensors="pt",
    )
    assert tokens.input_ids.shape == (2, 77)
    assert tokens.input_ids[:, 0].eq(49406).all()
    assert tokens.input_ids[0, 6] == 49407  # 5 words → end-of-text at position 6
    assert tokens.input_ids[1, -1] == 49407  # truncation keeps the end-of-text token last
