"""`world_quality`: the offline world's exact picture-quality judge, from pixels alone, in [0, 1]; and its soft,
differentiable form `world_quality_soft`.

The exact judge has four checks, each in [0, 1] (`quality_checks`), one per defect of `degrade.py`; each failed
check halves the score, `quality = Π (1 + check) / 2`, so a clean picture scores 1, one defect 0.5, two 0.25:

- **background**: background pixels (2 px or more away from any object) close to white — a tint or a texture fails;
- **colour**: each object's core pixels (the segment less its rim) close to its palette colour — fading fails;
- **sharpness**: few in-between pixels just outside the objects' edges, per edge pixel — a blur fails;
- **specks**: no palette-coloured components too small to be objects — stray dots fail.

Each check is a linear ramp between a distance (or count) that still passes fully and one that fails fully, set on
rendered ground truth (`validate_quality`: every `QUALITY_LEVELS` entry, clean ones ≥ 0.95, degraded ones low).

The soft form (`soft_quality`) has a gradient everywhere: each pixel is softly assigned to white or a palette colour,
and scores how close it is to what it is assigned to; background-assigned and object-assigned pixels are averaged
apart, and each mean halves the score as a failed check does. It sees tints, textures, fading and blur, but not
specks (they are palette colours), so it is the smooth part of the exact judge, not a copy of it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from texforce.world.detect import MIN_AREA, PALETTE, image_pixels, label_components, segment_colors

WHITE = np.array([255.0, 255.0, 255.0])
RAMPS = {  # (passes fully at, fails fully at)
    "background": (12.0, 40.0),  # mean distance of background pixels to white
    "colour": (20.0, 60.0),  # mean distance of object-core pixels to their palette colour
    "sharpness": (0.5, 1.3),  # in-between pixels around the objects per object-edge pixel
    "specks": (0.0, 3.0),  # palette-coloured components of 2 … MIN_AREA - 1 pixels
}
BETWEEN_DISTANCE = 40.0  # a pixel beside an object this far from the local background is in between
SOFT_ASSIGN, SOFT_WIDTH = 40.0, 30.0  # soft form: assignment temperature and closeness width, in RGB units


def _ramp(value: np.ndarray, name: str) -> np.ndarray:
    good, bad = RAMPS[name]
    return np.clip(1 - (value - good) / (bad - good), 0.0, 1.0)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation of boolean masks (B, H, W)."""
    pooled = F.max_pool2d(torch.from_numpy(mask[:, None].astype(np.float32)), 2 * radius + 1, 1, radius)
    return pooled[:, 0].numpy() > 0


def _box_mean(values: np.ndarray, weights: np.ndarray, radius: int) -> np.ndarray:
    """Weighted mean of (B, H, W, C) `values` over (2r + 1)² windows with (B, H, W) `weights`; NaN where none."""
    kernel = 2 * radius + 1
    w = torch.from_numpy(weights[:, None].astype(np.float64))
    v = torch.from_numpy(values.transpose(0, 3, 1, 2) * weights[:, None])
    total = F.avg_pool2d(w, kernel, 1, radius, count_include_pad=False)
    summed = F.avg_pool2d(v, kernel, 1, radius, count_include_pad=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (summed / total).numpy().transpose(0, 2, 3, 1)


def _masked_mean(values: np.ndarray, mask: np.ndarray, empty: float) -> np.ndarray:
    count = mask.sum((1, 2))
    return np.where(count > 0, (values * mask).sum((1, 2)) / np.maximum(count, 1), empty)


def quality_checks(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The four checks (B,) each in [0, 1] of float RGB pixels (B, 64, 64, 3) in [0, 255]."""
    classes = segment_colors(pixels)  # (B, H, W), -1 background
    palette = classes >= 0
    near = _dilate(palette, 2)
    background = ~near
    to_white = np.linalg.norm(pixels - WHITE, axis=-1)
    checks = {"background": _ramp(_masked_mean(to_white, background, 0.0), "background")}

    padded = np.pad(classes, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    same = [padded[:, 1 + dy : padded.shape[1] - 1 + dy, 1 + dx : padded.shape[2] - 1 + dx] == classes
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]  # fmt: skip
    core = palette & np.logical_and.reduce(same)
    to_palette = np.linalg.norm(pixels - PALETTE[np.maximum(classes, 0)], axis=-1)
    checks["colour"] = _ramp(_masked_mean(to_palette, core, 0.0), "colour")

    local = _box_mean(pixels, background, 4)  # the background colour around each pixel
    local = np.where(np.isnan(local), WHITE, local)
    ring = near & ~palette
    between = ring & (np.linalg.norm(pixels - local, axis=-1) > BETWEEN_DISTANCE)
    edge = palette & ~core
    ratio = between.sum((1, 2)) / np.maximum(edge.sum((1, 2)), 1)
    checks["sharpness"] = _ramp(ratio, "sharpness")

    labels = label_components(classes)
    specks = np.zeros(len(pixels))
    for i, image_labels in enumerate(labels):
        _, areas = np.unique(image_labels[image_labels > 0], return_counts=True)
        specks[i] = ((areas >= 2) & (areas < MIN_AREA)).sum()
    checks["specks"] = _ramp(specks, "specks")
    return checks


def exact_quality(images: torch.Tensor) -> torch.Tensor:
    """`world_quality` (B,) float32 of images (B, 3, H, W) in [0, 1]: each failed check halves it."""
    checks = quality_checks(image_pixels(images))
    return torch.from_numpy(np.prod((1 + np.stack(list(checks.values()))) / 2, axis=0)).float()


def soft_quality(images: torch.Tensor) -> torch.Tensor:
    """`world_quality_soft` (B,) of images (B, 3, H, W) in [0, 1], differentiable in the pixels."""
    if images.shape[-2:] != (64, 64):
        images = F.interpolate(images, size=(64, 64), mode="bilinear", antialias=True)
    pixels = images.clamp(0, 1).permute(0, 2, 3, 1) * 255.0  # (B, H, W, 3)
    references = torch.as_tensor(PALETTE, dtype=pixels.dtype, device=pixels.device)  # (C + 1, 3), white last
    squared = ((pixels[..., None, :] - references) ** 2).sum(-1)  # (B, H, W, C + 1)
    assign = torch.softmax(-squared / SOFT_ASSIGN**2, dim=-1)
    closeness = torch.exp(-(assign * squared).sum(-1) / (2 * SOFT_WIDTH**2))  # (B, H, W)
    to_background = assign[..., -1]
    to_object = 1 - to_background
    # one perfect pseudo-pixel on each side: an empty picture's object mean is 1, as the exact judge's
    background = ((to_background * closeness).sum((1, 2)) + 1) / (to_background.sum((1, 2)) + 1)
    objects = ((to_object * closeness).sum((1, 2)) + 1) / (to_object.sum((1, 2)) + 1)
    return (1 + background) / 2 * (1 + objects) / 2
