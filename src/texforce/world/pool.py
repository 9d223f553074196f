"""The web-like pre-training pool of world v2: pictures of varied quality whose captions state the quality only some
of the time and are sometimes wrong, as LAION's alt-texts are.

Why: a world whose pictures are all clean and whose captions are all true leaves no room in text space — the
plain prompt is already the U-Net's best input. Here a plain prompt lands in the average of its training data
(a mix of good and poor pictures, of true and near-miss scenes), while prompt engineering can reach better regions:
quality tags ("clean, sharp, minimal, …", `degrade.py`) select the clean pictures, and the careful source's
phrasing ("exactly 2 red circles"), whose captions are never wrong, selects the true scenes.

    pool = render_web_pool(24_000, seed=0)   # images, captions, qualities, and which captions are true
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from texforce.world.degrade import Quality, QualityMix, render_degraded
from texforce.world.scenes import (
    INVERSE_RELATION,
    PRETRAIN_MIX,
    SEEN_PAIRS,
    SceneSpec,
    caption_spec,
    make_caption,
    place_scene,
    sample_spec,
)


@dataclass(frozen=True)
class CaptionMix:
    """How web captions are written: how often they state the quality, come from the careful source, or are wrong."""

    tag_prob: float = 0.5  # the caption states its picture's quality: its three tags before the scene
    careful_prob: float = 0.2  # the careful source ("exactly 2 red circles"): always true
    count_off_prob: float = 0.15  # a count caption's number is off by one
    relation_reversed_prob: float = 0.1  # a relation caption says left for right, above for below
    object_left_out_prob: float = 0.1  # a relation caption names only one of its two objects
    color_swapped_prob: float = 0.05  # one object's colour is wrong (still a pairing pre-training sees)


@dataclass(frozen=True)
class WebMix:
    """The whole pre-training mixture: families of scenes, picture quality and caption habits."""

    families: dict[str, float] = field(default_factory=lambda: dict(PRETRAIN_MIX))
    quality: QualityMix = field(default_factory=QualityMix)
    captions: CaptionMix = field(default_factory=CaptionMix)


WEB_MIX = WebMix()


@dataclass
class WebPool:
    """Rendered pool: images uint8 (N, 64, 64, 3), captions (N), each picture's `Quality`, and whether each caption's
    claim is true of its picture (N,) bool."""

    images: np.ndarray
    captions: list[str]
    qualities: list[Quality]
    truthful: np.ndarray


def _swap_color(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    objects = list(spec.objects)
    i = int(rng.integers(len(objects)))
    taken = {(o.color, o.shape) for o in objects}
    colors = [c for c, s in SEEN_PAIRS if s == objects[i].shape and (c, s) not in taken]
    if not colors:
        return spec
    objects[i] = replace(objects[i], color=colors[int(rng.integers(len(colors)))])
    return SceneSpec(tuple(objects), spec.relation)


def web_claim(spec: SceneSpec, rng: np.random.Generator, mix: CaptionMix) -> tuple[SceneSpec, bool, bool]:
    """What a web caption claims about the picture of `spec`; whether it is the careful source's (then always true);
    whether the claim is true."""
    true_claim = claim = caption_spec(rng, spec, keep_size=0.5, keep_position=0.5)
    if rng.random() < mix.careful_prob:
        return claim, True, True
    first = claim.objects[0]
    if first.count > 1 and rng.random() < mix.count_off_prob:
        count = first.count + (1 if first.count == 2 or (first.count < 4 and rng.random() < 0.5) else -1)
        claim = SceneSpec((replace(first, count=count),))
    if claim.relation is not None:
        if rng.random() < mix.relation_reversed_prob:
            claim = SceneSpec(claim.objects, INVERSE_RELATION[claim.relation])
        if rng.random() < mix.object_left_out_prob:
            claim = SceneSpec((claim.objects[int(rng.integers(2))],))
    if rng.random() < mix.color_swapped_prob:
        claim = _swap_color(claim, rng)
    return claim, False, claim == true_claim


def web_caption(spec: SceneSpec, quality: Quality, rng: np.random.Generator, mix: CaptionMix) -> tuple[str, bool]:
    """A web caption of the picture of `spec` at `quality`, and whether its claim is true."""
    claim, careful, truthful = web_claim(spec, rng, mix)
    text = make_caption(claim, rng, careful=careful)
    if rng.random() < mix.tag_prob:
        text = ", ".join(quality.tags()) + ", " + text
    return text, truthful


def render_web_pool(num: int, seed: int, mix: WebMix = WEB_MIX) -> WebPool:
    """`num` pre-training scenes drawn from `mix`, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    families = list(mix.families)
    weights = np.array([mix.families[f] for f in families]) / sum(mix.families.values())
    images = np.empty((num, 64, 64, 3), dtype=np.uint8)
    captions, qualities, truthful = [], [], np.empty(num, dtype=bool)
    for i in range(num):
        spec = sample_spec(rng, families[rng.choice(len(families), p=weights)])
        quality = mix.quality.sample(rng)
        images[i] = render_degraded(place_scene(spec, rng), quality, rng)
        caption, truthful[i] = web_caption(spec, quality, rng, mix.captions)
        captions.append(caption)
        qualities.append(quality)
    return WebPool(images, captions, qualities, truthful)
