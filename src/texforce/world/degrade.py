"""Picture quality in the offline world: the ways a pre-training scene is degraded, and the tags that say so.

Web images vary in quality and their alt-texts say so only sometimes; world v2 models that. A `Quality` is one
choice on each of three independent axes:

- background: `white` (clean), `tinted` (a flat light colour) or `textured` (low-frequency colour mottling);
- rendering: `flat` (clean), `faded` (object colours blended a quarter of the way into the background) or
  `blurred` (a Gaussian blur of the whole picture);
- distractors: `none` (clean) or `specks` (2–5 stray palette-coloured dots, too small to be objects).

Each axis value has a tag word (`TAG_OF`; "clean", "noisy", "blurry", …); a picture's tags are one per axis, in that
order ("clean, sharp, minimal" for a clean picture). Every degradation keeps the objects detectable, so a degraded
picture of a true caption still scores (nearly) 1 on `world_alignment`; `world_quality`
(judges/quality.py) measures it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from texforce.world.scenes import BACKGROUND, COLORS, IMAGE_SIZE, PlacedObject, shape_mask

BACKGROUNDS = ("white", "tinted", "textured")
RENDERINGS = ("flat", "faded", "blurred")
DISTRACTORS = ("none", "specks")
TAG_OF = {  # the tag word of each axis value
    "white": "clean",
    "tinted": "dull",
    "textured": "noisy",
    "flat": "sharp",
    "faded": "faded",
    "blurred": "blurry",
    "none": "minimal",
    "specks": "cluttered",
}
POSITIVE_TAGS = (TAG_OF["white"], TAG_OF["flat"], TAG_OF["none"])  # the clean picture's tags


@dataclass(frozen=True)
class Quality:
    """One picture's quality: a value on each axis; the default is the clean picture of world v1."""

    background: str = "white"
    rendering: str = "flat"
    distractors: str = "none"

    def __post_init__(self) -> None:
        for value, allowed in ((self.background, BACKGROUNDS), (self.rendering, RENDERINGS),
                               (self.distractors, DISTRACTORS)):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"unknown quality {value!r}; one of {', '.join(allowed)}")

    @property
    def defects(self) -> int:
        """How many axes are not clean (0–3)."""
        return (self.background != "white") + (self.rendering != "flat") + (self.distractors != "none")

    def tags(self) -> list[str]:
        """The picture's tags: one per axis, in the axes' order."""
        return [TAG_OF[self.background], TAG_OF[self.rendering], TAG_OF[self.distractors]]


CLEAN = Quality()
QUALITY_LEVELS = tuple(Quality(*values) for values in itertools.product(BACKGROUNDS, RENDERINGS, DISTRACTORS))


@dataclass(frozen=True)
class QualityMix:
    """How often each axis value occurs in the web-like pre-training pool (each axis drawn independently)."""

    background: tuple[float, float, float] = (0.5, 0.25, 0.25)
    rendering: tuple[float, float, float] = (0.55, 0.2, 0.25)
    distractors: tuple[float, float] = (0.65, 0.35)

    def sample(self, rng: np.random.Generator) -> Quality:
        def pick(values: tuple[str, ...], weights: tuple[float, ...]) -> str:
            return values[rng.choice(len(values), p=np.array(weights) / sum(weights))]

        return Quality(
            pick(BACKGROUNDS, self.background), pick(RENDERINGS, self.rendering), pick(DISTRACTORS, self.distractors)
        )

    def clean_share(self) -> float:
        """The share of pool pictures with no defect."""
        return (
            self.background[0] / sum(self.background)
            * self.rendering[0] / sum(self.rendering)
            * self.distractors[0] / sum(self.distractors)
        )  # fmt: skip


def _upsample(field: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of a (k, k, C) field to (64, 64, C)."""
    k = field.shape[0]
    position = np.clip((np.arange(IMAGE_SIZE) + 0.5) * k / IMAGE_SIZE - 0.5, 0, k - 1)
    lo = np.minimum(position.astype(int), k - 2)
    weight = position - lo
    matrix = np.zeros((IMAGE_SIZE, k))
    matrix[np.arange(IMAGE_SIZE), lo] = 1 - weight
    matrix[np.arange(IMAGE_SIZE), lo + 1] += weight
    return np.einsum("yi,ijc,xj->yxc", matrix, field, matrix)


def background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A float (64, 64, 3) background in [0, 255]."""
    if kind == "white":
        return np.broadcast_to(np.array(BACKGROUND, np.float64), (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    if kind == "tinted":
        tint = rng.uniform(195, 230) + rng.uniform(-12, 12, size=3)
        return np.broadcast_to(np.clip(tint, 0, 245), (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    if kind == "textured":
        base = rng.uniform(215, 245) + rng.uniform(-6, 6, size=3)
        mottling = _upsample(rng.normal(0, 12, size=(4, 4, 3)))
        return np.clip(base + mottling, 150, 255)
    raise ValueError(f"unknown background {kind!r}")


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = 3
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    image = sum(w * padded[radius + o : radius + o + IMAGE_SIZE] for o, w in zip(offsets, kernel, strict=True))
    padded = np.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(w * padded[:, radius + o : radius + o + IMAGE_SIZE] for o, w in zip(offsets, kernel, strict=True))


def _specks(covered: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, int, str]]:
    """2–5 stray dots (x, y, side, colour) of side 2 or 3, clear of objects and of each other by 3 px."""
    specks: list[tuple[int, int, int, str]] = []
    blocked = covered.copy()
    for _ in range(int(rng.integers(2, 6))):
        for _ in range(50):
            side = int(rng.integers(2, 4))
            x, y = (int(v) for v in rng.integers(2, IMAGE_SIZE - 2 - side, size=2))
            if not blocked[max(0, y - 3) : y + side + 3, max(0, x - 3) : x + side + 3].any():
                blocked[y : y + side, x : x + side] = True
                specks.append((x, y, side, list(COLORS)[int(rng.integers(len(COLORS)))]))
                break
    return specks


def render_degraded(objects: list[PlacedObject], quality: Quality, rng: np.random.Generator) -> np.ndarray:
    """uint8 (64, 64, 3) image of `objects` at `quality`; `CLEAN` gives exactly `scenes.render_scene`."""
    image = background(quality.background, rng)
    fade = rng.uniform(0.2, 0.3) if quality.rendering == "faded" else 0.0
    covered = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for o in objects:
        mask = shape_mask(o.shape, o.side, o.cx, o.cy)
        color = np.array(COLORS[o.color], np.float64)
        image[mask] = color + fade * (image[mask] - color)
        covered |= mask
    if quality.distractors == "specks":
        for x, y, side, name in _specks(covered, rng):
            image[y : y + side, x : x + side] = COLORS[name]
    if quality.rendering == "blurred":
        image = _blur(image, rng.uniform(0.9, 1.3))
    return np.clip(image, 0, 255).round().astype(np.uint8)
