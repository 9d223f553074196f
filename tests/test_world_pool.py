"""The web-like pre-training pool of world v2: varied quality, tags that are true when present, careful captions that
are always true, wrong captions at the configured rates, and every caption in the world's language."""

from __future__ import annotations

import numpy as np
import pytest

from texforce.world.degrade import QUALITY_LEVELS, Quality, QualityMix
from texforce.world.pool import CaptionMix, render_web_pool, web_claim
from texforce.world.scenes import CAREFUL_WORD, HELDOUT_PAIRS, QUALITY_TAGS, parse_prompt, sample_spec

POOL = render_web_pool(1500, seed=0)


def test_pool_is_deterministic_and_mixed():
    again = render_web_pool(50, seed=0)
    np.testing.assert_array_equal(again.images, POOL.images[:50])
    assert again.captions == POOL.captions[:50]
    clean = np.mean([q.defects == 0 for q in POOL.qualities])
    assert abs(clean - QualityMix().clean_share()) < 0.04
    assert len(set(POOL.qualities)) == len(QUALITY_LEVELS)


def test_every_caption_parses_and_never_names_a_heldout_pairing():
    for caption in POOL.captions:
        spec = parse_prompt(caption)
        assert spec is not None, caption
        assert all((o.color, o.shape) not in HELDOUT_PAIRS for o in spec.objects), caption


def _tags(caption: str) -> set[str]:
    return {part.strip() for part in caption.split(",") if part.strip() in QUALITY_TAGS}


def test_tags_are_true_of_their_picture_and_appear_only_sometimes():
    tagged = 0
    for caption, quality in zip(POOL.captions, POOL.qualities, strict=True):
        tags = _tags(caption)
        tagged += bool(tags)
        assert tags <= set(quality.tags()), (caption, quality)
    assert 0.4 < tagged / len(POOL.captions) < 0.6


def test_careful_captions_are_always_true_and_others_sometimes_wrong():
    careful = np.array([CAREFUL_WORD in c for c in POOL.captions])
    assert 0.15 < careful.mean() < 0.25
    assert POOL.truthful[careful].all()
    assert 0.05 < 1 - POOL.truthful[~careful].mean() < 0.35


@pytest.mark.parametrize("family", ["count", "relation"])
def test_wrong_claims_differ_from_the_picture_in_the_documented_ways(family):
    rng = np.random.default_rng(1)
    mix = CaptionMix(careful_prob=0.0, color_swapped_prob=0.0)
    wrong = 0
    for _ in range(400):
        spec = sample_spec(rng, family)
        claim, careful, truthful = web_claim(spec, rng, mix)
        assert not careful
        if truthful:
            continue
        wrong += 1
        if family == "count":
            assert abs(claim.objects[0].count - spec.objects[0].count) == 1
        else:
            assert len(claim.objects) == 1 or claim.relation != spec.relation
    expected = mix.count_off_prob if family == "count" else 1 - (1 - mix.relation_reversed_prob) * (
        1 - mix.object_left_out_prob)  # fmt: skip
    assert abs(wrong / 400 - expected) < 0.06


def test_quality_rejects_unknown_values():
    with pytest.raises(ValueError, match="unknown quality"):
        Quality("grey")
