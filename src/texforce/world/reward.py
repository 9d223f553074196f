"""Rewards of the offline world: the exact `world_alignment`, and the learned, differentiable `world_preference`
(the world's ImageReward, see preference.py) and `world_clipscore`.

`world_alignment` parses the prompt into a `SceneSpec`, finds the objects in the image (nearest-palette
colour segmentation, connected components, a template-IoU shape classifier) and returns the fraction of
the claim that holds, minus `EXTRA_PENALTY` per object beyond those claimed. Per object group the checks
are: colour present, shape present, colour–shape binding, exact count, and the size and position when
claimed; a relation is worth half the score of a two-object prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from texforce.errors import TexforceError
from texforce.rewards.base import DifferentiableReward
from texforce.world.scenes import (
    BACKGROUND,
    COLORS,
    IMAGE_SIZE,
    SHAPES,
    SceneSpec,
    parse_prompt,
    shape_mask,
)

MAX_COLOR_DISTANCE = 110.0  # pixels farther than this from every palette colour count as background
MIN_AREA = 16  # components with fewer pixels are noise, not objects
MIN_SHAPE_IOU = 0.6  # below this IoU with every template an object has no shape
LARGE_SIDE = 16  # bounding-box side (px) from which an object counts as large
EXTRA_PENALTY = 0.25
_PALETTE = np.array([*COLORS.values(), BACKGROUND], dtype=np.float32)  # (C + 1, 3)
_COLOR_NAMES = list(COLORS)


@dataclass(frozen=True)
class DetectedObject:
    """One connected component of a palette colour; `shape` is `None` when no template fits."""

    color: str
    shape: str | None
    side: int
    cx: float
    cy: float


def parse_world_prompt(prompt: str) -> SceneSpec:
    """`parse_prompt`, raising a `TexforceError` that shows the expected language."""
    spec = parse_prompt(prompt)
    if spec is None:
        raise TexforceError(
            f"world_alignment cannot parse prompt {prompt!r}; world prompts look like 'a red circle', "
            f"'three green triangles' or 'a red circle left of a blue square' (colours: {', '.join(COLORS)}; "
            f"shapes: {', '.join(SHAPES)})"
        )
    return spec


def segment_colors(pixels: np.ndarray) -> np.ndarray:
    """Palette index (B, H, W) int64 of float RGB pixels (B, H, W, 3) in [0, 255]; -1 for background."""
    distances = ((pixels[..., None, :] - _PALETTE) ** 2).sum(-1)  # (B, H, W, C + 1)
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


def detect_objects(images: torch.Tensor) -> list[list[DetectedObject]]:
    """The objects in each image of a batch (B, 3, H, W) in [0, 1]; images are resized to 64×64."""
    images = images.detach().float().cpu()
    if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    pixels = images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0  # (B, H, W, 3)
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


def _in_region(o: DetectedObject, position: str) -> bool:
    lo, hi = 0.4 * IMAGE_SIZE, 0.6 * IMAGE_SIZE
    return {
        "left": o.cx < lo,
        "right": o.cx > hi,
        "top": o.cy < lo,
        "bottom": o.cy > hi,
        "center": lo - 4 <= o.cx <= hi + 4 and lo - 4 <= o.cy <= hi + 4,
    }[position]


def _relation_holds(a: DetectedObject, b: DetectedObject, relation: str, margin: float = 4.0) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {"left": dx > margin, "right": -dx > margin, "above": dy > margin, "below": -dy > margin}[relation]


def score_scene(spec: SceneSpec, objects: Sequence[DetectedObject]) -> float:
    """Fraction of `spec` that `objects` satisfy, minus `EXTRA_PENALTY` per unclaimed object, in [0, 1]."""
    group_scores, matches = [], []
    for claim in spec.objects:
        k = claim.count
        bound = [o for o in objects if o.color == claim.color and o.shape == claim.shape]
        checks = [
            min(sum(o.color == claim.color for o in objects), k) / k,
            min(sum(o.shape == claim.shape for o in objects), k) / k,
            min(len(bound), k) / k,
            float(len(bound) == k),
        ]
        if claim.size is not None:
            checks.append(min(sum((o.side >= LARGE_SIDE) == (claim.size == "large") for o in bound), k) / k)
        if claim.position is not None:
            checks.append(float(any(_in_region(o, claim.position) for o in bound)))
        group_scores.append(sum(checks) / len(checks))
        matches.append(bound)
    score = sum(group_scores) / len(group_scores)
    if spec.relation is not None:
        related = any(_relation_holds(a, b, spec.relation) for a in matches[0] for b in matches[1] if a != b)
        score = 0.5 * score + 0.5 * float(related)
    extra = max(0, len(objects) - sum(claim.count for claim in spec.objects))
    return max(0.0, score - EXTRA_PENALTY * extra)


class WorldAlignmentReward:
    """Exact prompt–image alignment in [0, 1] for world prompts; raises `TexforceError` on other prompts."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        specs = [parse_world_prompt(p) for p in prompts]
        detections = detect_objects(images)
        scores = [score_scene(spec, objects) for spec, objects in zip(specs, detections, strict=True)]
        return torch.tensor(scores, dtype=torch.float32)


class WorldClipScoreReward(DifferentiableReward):
    """Learned reward: cosine similarity of the world CLIP's image and text embeddings, in [-1, 1].

    Uses the shipped image tower (`clip_dir`) and the text tower of the world pipeline (`model_dir`).
    The text tower is the frozen pre-trained one, not a policy being fine-tuned.
    """

    def __init__(self, model_dir: str | Path | None = None, clip_dir: str | Path | None = None) -> None:
        from texforce.world.clip import load_world_clip

        self.clip = load_world_clip(model_dir, clip_dir)
        self.batch_size = 256

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        image_embeds = self.clip.embed_images(images.cpu())
        with torch.no_grad():
            text_embeds = self.clip.embed_texts(list(prompts))
        return (image_embeds * text_embeds.to(image_embeds.dtype)).sum(-1).to(images.device)


class WorldPreferenceReward(DifferentiableReward):
    """The world's ImageReward: a small image+text network trained on exactly judged generated images, in [0, 1].

    Reads the prompt with the frozen text tower of the world pipeline (`model_dir`); the network is in
    `preference_dir` (default: the shipped one).
    """

    def __init__(self, preference_dir: str | Path | None = None, model_dir: str | Path | None = None) -> None:
        from texforce.world import PREFERENCE_DIR
        from texforce.world.preference import TextStates, load_preference_model

        self.model = load_preference_model(Path(preference_dir or PREFERENCE_DIR))
        self.text = TextStates(model_dir)
        self.batch_size = 256

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        states, mask = self.text(prompts)
        parameter = next(self.model.parameters())
        return self.model(images.cpu().to(parameter.dtype), states.to(parameter.dtype), mask).to(images.device)


def make_world_alignment(device: torch.device, dtype: torch.dtype) -> WorldAlignmentReward:
    return WorldAlignmentReward()


def make_world_clipscore(device: torch.device, dtype: torch.dtype) -> WorldClipScoreReward:
    return WorldClipScoreReward()


def make_world_preference(device: torch.device, dtype: torch.dtype) -> WorldPreferenceReward:
    return WorldPreferenceReward()
