"""`world_quality` and `world_score`: validated on rendered ground truth at every quality level; the soft form's
gradient against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from texforce.rewards import build_reward
from texforce.world.degrade import CLEAN, QUALITY_LEVELS, Quality, render_degraded
from texforce.world.judges.evaluate import validate_quality
from texforce.world.judges.quality import exact_quality, quality_checks, soft_quality
from texforce.world.scenes import PlacedObject, render_scene

OBJECTS = [PlacedObject("red", "circle", 12, 16.0, 20.0), PlacedObject("blue", "square", 20, 44.0, 40.0)]


def _pixels(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


def test_every_quality_level_scores_by_its_defects():
    """Clean pictures score 1; each defect about halves the score; the objects stay detectable at every level."""
    results = validate_quality(num_scenes=24, seed=4)
    assert len(results) == len(QUALITY_LEVELS) == 18
    for level, r in results.items():
        assert r["alignment"] >= 0.85, level  # a blur costs a few detections (thin triangle tips)
        if r["defects"] == 0:
            assert r["quality"] >= 0.99 and r["quality_soft"] >= 0.99, level
        else:
            hidden = "blurred/specks" in level  # a blur washes most specks out below the detector
            assert r["quality"] <= 0.6 ** (r["defects"] - hidden), level
    soft_of_degraded = [r["quality_soft"] for level, r in results.items() if not level.startswith("white/flat/")]
    assert max(soft_of_degraded) < 0.9  # the soft form sees every defect but specks


@pytest.mark.parametrize("quality", [q for q in QUALITY_LEVELS if q.defects == 1])
def test_each_single_defect_fails_its_own_check(quality):
    check = {"background": "background", "rendering": None, "distractors": "specks"}
    image = render_degraded(OBJECTS, quality, np.random.default_rng(0))
    checks = {k: float(v[0]) for k, v in quality_checks(image[None].astype(np.float64)).items()}
    failed = {k for k, v in checks.items() if v < 0.5}
    if quality.background != "white":
        assert failed == {check["background"]}
    elif quality.distractors != "none":
        assert failed == {check["distractors"]}
    else:
        assert failed == {"colour" if quality.rendering == "faded" else "sharpness"}


def test_clean_render_is_the_v1_render_and_scores_one():
    image = render_degraded(OBJECTS, CLEAN, np.random.default_rng(0))
    np.testing.assert_array_equal(image, render_scene(OBJECTS))
    assert exact_quality(_pixels(image)).item() == 1.0
    assert exact_quality(torch.ones(1, 3, 64, 64)).item() == 1.0  # a blank white picture is clean (and unaligned)


def test_world_score_is_alignment_times_quality():
    images = torch.cat([_pixels(render_degraded(OBJECTS, q, np.random.default_rng(1)))
                        for q in (CLEAN, Quality("tinted"), Quality("white", "flat", "specks"))])  # fmt: skip
    prompts = ["a red circle left of a blue square"] * 2 + ["three green triangles"]
    reward = build_reward("world_score+world_alignment:0+world_quality:0")
    output = reward(images, prompts)
    alignment, quality = output.components["world_alignment"], output.components["world_quality"]
    torch.testing.assert_close(output.components["world_score"], alignment * quality)
    assert alignment[0] == alignment[1] == 1.0 and quality[0] == 1.0 and quality[1] < 0.6
    assert output.total[2] < 0.2


def test_soft_quality_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    image = _pixels(render_degraded(OBJECTS, Quality("textured", "blurred"), rng)).double()
    image = (image * 0.9 + 0.05).requires_grad_(True)  # inside (0, 1): no clamp at the probe points
    soft_quality(image).sum().backward()
    direction = torch.randn(image.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        numeric = (soft_quality(image + eps * direction) - soft_quality(image - eps * direction)) / (2 * eps)
    analytic = (image.grad * direction).sum()
    assert analytic.abs() > 1e-6
    torch.testing.assert_close(analytic, numeric.sum(), rtol=1e-5, atol=1e-9)


def test_soft_quality_is_a_registered_differentiable_reward():
    reward = build_reward("world_quality_soft")
    images = torch.full((2, 3, 64, 64), 0.8, requires_grad=True)
    output = reward.differentiable(images, ["a red circle", "a red circle"])
    output.total.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
