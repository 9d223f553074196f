"""The exact judges of the offline world: `world_alignment` (does the picture show what the prompt says?),
`world_quality` (is it a clean picture? see quality.py) and their product `world_score`, the headline judge.

`world_alignment` parses the prompt into a `SceneSpec`, finds the objects in the image (detect.py) and returns the
fraction of the claim that holds, minus `EXTRA_PENALTY` per object beyond those claimed. Per object group the checks
are: colour present, shape present, colour–shape binding, exact count, and the size and position when claimed; a
relation is worth half the score of a two-object prompt. Quality tags and "exactly" in a prompt claim nothing.

`world_score = world_alignment × world_quality`: a picture is good when it is right *and* clean; a clean picture of
the wrong scene, or a blank one, scores 0. The learned rewards (`world_preference`, `world_clipscore`) are in
learned.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from texforce.errors import TexforceError
from texforce.reward_fn import DifferentiableReward
from texforce.world.detect import DetectedObject, detect_objects
from texforce.world.judges.quality import exact_quality, soft_quality
from texforce.world.scenes import COLORS, IMAGE_SIZE, SHAPES, SceneSpec, parse_prompt

LARGE_SIDE = 16  # bounding-box side (px) from which an object counts as large
EXTRA_PENALTY = 0.25


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


def _check_batch(images: torch.Tensor, prompts: Sequence[str]) -> None:
    if images.shape[0] != len(prompts):
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")


class WorldAlignmentReward:
    """Exact prompt–image alignment in [0, 1] for world prompts; raises `TexforceError` on other prompts."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_batch(images, prompts)
        specs = [parse_world_prompt(p) for p in prompts]
        detections = detect_objects(images)
        scores = [score_scene(spec, objects) for spec, objects in zip(specs, detections, strict=True)]
        return torch.tensor(scores, dtype=torch.float32)


class WorldQualityReward:
    """Exact picture quality in [0, 1] (quality.py); the prompt is not read."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_batch(images, prompts)
        return exact_quality(images)


class WorldSoftQualityReward(DifferentiableReward):
    """The soft, differentiable form of `world_quality` (quality.py; it does not see specks)."""

    batch_size = 256

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_batch(images, prompts)
        return soft_quality(images)


class WorldScoreReward:
    """The headline exact judge: `world_alignment × world_quality`, in [0, 1]."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return WorldAlignmentReward()(images, prompts) * exact_quality(images)


def make_world_alignment(device: torch.device, dtype: torch.dtype) -> WorldAlignmentReward:
    return WorldAlignmentReward()


def make_world_quality(device: torch.device, dtype: torch.dtype) -> WorldQualityReward:
    return WorldQualityReward()


def make_world_quality_soft(device: torch.device, dtype: torch.dtype) -> WorldSoftQualityReward:
    return WorldSoftQualityReward()


def make_world_score(device: torch.device, dtype: torch.dtype) -> WorldScoreReward:
    return WorldScoreReward()
