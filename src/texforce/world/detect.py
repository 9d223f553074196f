"""Object detection in world images: nearest-palette colour segmentation, connected components and a template-IoU
shape classifier. Shared by the exact judges (`world_alignment`, `world_quality`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from texforce.world.scenes import BACKGROUND, COLORS, IMAGE_SIZE, SHAPES, shape_mask

MAX_COLOR_DISTANCE = 110.0  # pixels farther than this from every palette colour count as background
MIN_AREA = 16  # components with fewer pixels are noise, not objects
MIN_SHAPE_IOU = 0.6  # below this IoU with every template an object has no shape
PALETTE = np.array([*COLORS.values(), BACKGROUND], dtype=np.float32)  # (C + 1, 3)
_COLOR_NAMES = list(COLORS)


@dataclass(frozen=True)
class DetectedObject:
    """One connected component of a palette colour; `shape` is `None` when no template fits."""

    color: str
    shape: str | None
    side: int
    cx: float
    cy: float


def segment_colors(pixels: np.ndarray) -> np.ndarray:
    """Palette index (B, H, W) int64 of float RGB pixels (B, H, W, 3) in [0, 255]; -1 for background."""
    distances = ((pixels[..., None, :] - PALETTE) ** 2).sum(-1)  # (B, H, W, C + 1)
    index = distances.argmin(-1)
    background = (index == len(COLORS)) | (distances.min(-1) > MAX_COLOR_DISTANCE**2)
    return np.where(background, -1, index)


def label_components(classes: np.ndarray) -> np.ndarray:
    """4-connected components of equal class (B, H, W); 0 for background, else a label unique per batch."""
    labels = np.where(classes >= 0, np.arange(1, classes.size + 1).reshape(classes.shape), 0)
    same_y = (classes[:, 1:, :] == classes[:, :-1, :]) & (classes[:, 1:, :] >= 0)  # (B, H - 1, W)
    same_x = (classes[:, :, 1:] == classes[:, :, :-1]) & (classes[:, :, 1:] >= 0)  # (B, H, W - 1)
    while True:
        new = labels.copy()
        np.maximum(new[:, 1:, :], np.where(same_y, labels[:, :-1, :], 0), out=new[:, 1:, :])
        np.maximum(new[:, :-1, :], np.where(same_y, labels[:, 1:, :], 0), out=new[:, :-1, :])
        np.maximum(new[:, :, 1:], np.where(same_x, labels[:, :, :-1], 0), out=new[:, :, 1:])
        np.maximum(new[:, :, :-1], np.where(same_x, labels[:, :, 1:], 0), out=new[:, :, :-1])
        if np.array_equal(new, labels):
            return labels
        labels = new


def _classify_shape(mask: np.ndarray, side: int, cx: float, cy: float) -> str | None:
    best, best_iou = None, MIN_SHAPE_IOU
    for shape in SHAPES:
        template = shape_mask(shape, side, cx, cy)
        iou = (mask & template).sum() / max((mask | template).sum(), 1)
        if iou >= best_iou:
            best, best_iou = shape, iou
    return best


def tensor_images(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, 64, 64, 3) as float (N, 3, 64, 64) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def image_pixels(images: torch.Tensor) -> np.ndarray:
    """Float RGB pixels (B, 64, 64, 3) in [0, 255] of images (B, 3, H, W) in [0, 1], resized to 64×64."""
    images = images.detach().float().cpu()
    if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    return images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0


def detect_objects(images: torch.Tensor) -> list[list[DetectedObject]]:
    """The objects in each image of a batch (B, 3, H, W) in [0, 1]; images are resized to 64×64."""
    pixels = image_pixels(images)  # (B, H, W, 3)
    classes = segment_colors(pixels)
    labels = label_components(classes)
    results = []
    for image_labels, image_classes in zip(labels, classes, strict=True):
        ids, areas = np.unique(image_labels[image_labels > 0], return_counts=True)
        objects = []
        for label in ids[areas >= MIN_AREA]:
            mask = image_labels == label
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            side = int(max(y1 - y0, x1 - x0))
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            color = _COLOR_NAMES[image_classes[ys[0], xs[0]]]
            objects.append(DetectedObject(color, _classify_shape(mask, side, cx, cy), side, cx, cy))
        results.append(objects)
    return results
