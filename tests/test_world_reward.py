"""`world_alignment`: validated on rendered ground truth before it is trusted."""

from __future__ import annotations

import pytest
import torch

from texforce.errors import TexforceError
from texforce.rewards import build_reward
from texforce.world.detect import detect_objects
from texforce.world.judges.evaluate import validate_reward
from texforce.world.judges.exact import WorldAlignmentReward
from texforce.world.scenes import PlacedObject, render_scene


def _pixels(objects: list[PlacedObject]) -> torch.Tensor:
    return torch.from_numpy(render_scene(objects)).permute(2, 0, 1)[None].float() / 255.0


def test_reward_validation_thresholds():
    validation = validate_reward(num_scenes=256, seed=5)
    assert validation["ground_truth"] >= 0.95
    assert validation["swapped"] <= 0.3


def test_detects_colours_shapes_and_sizes():
    objects = [
        PlacedObject("red", "circle", 12, 12.0, 14.0),
        PlacedObject("blue", "square", 20, 40.0, 40.0),
        PlacedObject("yellow", "triangle", 12, 50.0, 12.0),
    ]
    found = sorted((o.color, o.shape, o.side >= 16) for o in detect_objects(_pixels(objects))[0])
    assert found == [("blue", "square", True), ("red", "circle", False), ("yellow", "triangle", False)]


def test_scores_relations_counts_and_extra_objects():
    reward = WorldAlignmentReward()
    pair = _pixels([PlacedObject("red", "circle", 12, 14.0, 30.0), PlacedObject("blue", "square", 12, 48.0, 30.0)])
    images = pair.repeat(4, 1, 1, 1)
    prompts = [
        "a red circle to the left of a blue square",
        "a blue square left of a red circle",  # wrong relation: half the score
        "two red circles",  # one of two, and an extra object
        "a red circle",  # right, but one extra object
    ]
    scores = reward(images, prompts)
    assert scores[0] == 1.0
    assert scores[1] == pytest.approx(0.5)
    assert scores[2] < 0.5
    assert scores[3] == pytest.approx(0.75)
    assert scores.dtype == torch.float32 and scores.shape == (4,)


def test_blank_image_scores_zero_and_registry_builds_it():
    reward = build_reward("world_alignment")
    output = reward(torch.ones(2, 3, 64, 64), ["a red circle", "three green triangles"])
    assert output.total.tolist() == [0.0, 0.0]


def test_unparseable_prompt_raises():
    with pytest.raises(TexforceError, match="cannot parse"):
        WorldAlignmentReward()(torch.ones(1, 3, 64, 64), ["a photo of a cat"])
