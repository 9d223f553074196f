"""The world's scenes: deterministic rendering, captions that parse back to their claim, prompt splits."""

from __future__ import annotations

import numpy as np
import pytest

from texforce.world.scenes import (
    FAMILIES,
    HELDOUT_PAIRS,
    SEEN_PAIRS,
    caption_spec,
    family_prompts,
    heldout_prompts,
    make_caption,
    parse_prompt,
    render_pool,
    sample_spec,
    spec_split,
    train_prompts,
)


def test_render_pool_is_deterministic():
    images_a, captions_a = render_pool(64, seed=3)
    images_b, captions_b = render_pool(64, seed=3)
    images_c, _ = render_pool(64, seed=4)
    assert images_a.shape == (64, 64, 64, 3) and images_a.dtype == np.uint8
    np.testing.assert_array_equal(images_a, images_b)
    assert captions_a == captions_b
    assert not np.array_equal(images_a, images_c)


@pytest.mark.parametrize("family", FAMILIES)
def test_captions_parse_back_to_their_claim(family):
    rng = np.random.default_rng(0)
    for _ in range(200):
        claim = caption_spec(rng, sample_spec(rng, family), keep_size=0.5, keep_position=0.5)
        for caption in (make_caption(claim), make_caption(claim, rng)):
            assert parse_prompt(caption).canonical() == claim.canonical(), caption


def test_parse_examples_and_rejects():
    spec = parse_prompt("A photo of three green triangles.")
    assert (spec.objects[0].count, spec.objects[0].color, spec.objects[0].shape) == (3, "green", "triangle")
    spec = parse_prompt("a blue box to the right of a small red disk").canonical()
    assert spec.relation == "left" and spec.objects[0].shape == "circle" and spec.objects[0].size == "small"
    for prompt in ("a photo of a cat", "three red circles left of a square", "a pink circle", ""):
        assert parse_prompt(prompt) is None


def test_seen_and_heldout_pairs_cover_the_palette():
    assert len(SEEN_PAIRS) + len(HELDOUT_PAIRS) == 18 and not set(SEEN_PAIRS) & HELDOUT_PAIRS


def test_quality_tags_and_careful_phrasing_claim_nothing_more():
    plain = parse_prompt("two red circles left of a blue square")
    for prompt in (
        "high quality, clean, two red circles left of a blue square",
        "two red circles left of a blue square, sharp, minimal",
        "noisy, a photo of two red circles left of a blue square on a white background, low quality",
    ):
        assert parse_prompt(prompt) == plain, prompt
    spec = parse_prompt("three green triangles")
    assert parse_prompt("exactly three green triangles") == spec
    rng = np.random.default_rng(0)
    for _ in range(100):
        claim = caption_spec(rng, sample_spec(rng, "relation"), keep_size=0.5, keep_position=0.5)
        careful = make_caption(claim, rng, careful=True)
        assert careful.count("exactly") == 2 and parse_prompt(careful).canonical() == claim.canonical(), careful
    assert parse_prompt("clean") is None and parse_prompt("exactly a cat") is None


def test_prompt_splits_are_disjoint_and_deterministic():
    for family in ("single", "count", "relation"):
        train = {parse_prompt(p).canonical() for p in family_prompts(family, "train", 64)}
        heldout = {parse_prompt(p).canonical() for p in family_prompts(family, "heldout", 64)}
        assert not train & heldout
        assert all(spec_split(s) == "heldout" for s in heldout)
    composition = family_prompts("composition", "heldout", 64)
    assert len(composition) == 64
    assert all(any((o.color, o.shape) in HELDOUT_PAIRS for o in parse_prompt(p).objects) for p in composition)
    assert train_prompts(16) == train_prompts(16) and len(train_prompts(16)) == 16
    assert not set(train_prompts(32)) & set(heldout_prompts(32))
    with pytest.raises(ValueError):
        family_prompts("composition", "train")
