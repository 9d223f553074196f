"""Differentiable rewards: the gradient of every one of them agrees with finite differences (tiny random models,
double precision), its scores equal the no-grad path's, and the registry says which rewards have a gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from texforce.reward_fn import DifferentiableReward, WeightedReward
from texforce.rewards import REWARDS, differentiable_rewards
from texforce.rewards.clip import AestheticReward, CLIPEmbedder, CLIPSimilarityReward, MLPHead
from texforce.rewards.imagereward import ImageReward, ImageRewardModel, build_blip_tokenizer
from texforce.rewards.jpeg import JpegCompressibility
from texforce.rewards.preprocess import ImageTransform
from texforce.world.judges.exact import WorldSoftQualityReward
from texforce.world.judges.learned import WorldClipScoreReward, WorldPreferenceReward
from texforce.world.judges.preference_model import PreferenceModel, PreferenceModelConfig, TextStates

FIXTURES = Path(__file__).parent / "fixtures" / "rewards"
PROMPTS = ["a red circle to the left of a blue square", "three green triangles"]


def _tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config=tower, vision_config={**tower, "image_size": 224, "patch_size": 32}, projection_dim=768
    )
    return CLIPModel(config).eval()


def _hps() -> CLIPSimilarityReward:
    """HPS's scorer as `make_hps_reward` builds it (padding transform), on a tiny CLIP."""
    return CLIPSimilarityReward(CLIPEmbedder(_tiny_clip().double(), ImageTransform(mode="pad")))


def _imagereward(tmp_path: Path) -> ImageReward:
    from test_rewards_imagereward import _tiny_configs, _write_vocab

    from texforce.rewards.imagereward import convert_imagereward_state_dict

    golden = torch.load(FIXTURES / "imagereward_tiny.pt", weights_only=True)
    model = ImageRewardModel(*_tiny_configs(golden["config"])).eval()
    model.load_state_dict(convert_imagereward_state_dict(golden["state_dict"]))
    return ImageReward(model.double(), build_blip_tokenizer(_write_vocab(tmp_path / "vocab.txt")))


def _world_preference() -> WorldPreferenceReward:
    """The reward's code path with a tiny random network (the shipped weights are checked in test_world_preference)."""
    reward = WorldPreferenceReward.__new__(WorldPreferenceReward)
    torch.manual_seed(0)
    reward.model = PreferenceModel(PreferenceModelConfig(width=16, num_layers=1, num_heads=2)).double().eval()
    reward.text = TextStates()
    reward.batch_size = 8
    return reward


def _world_clipscore() -> WorldClipScoreReward:
    reward = WorldClipScoreReward()
    reward.clip.double()
    return reward


SCORERS = {
    "clipscore": lambda tmp: CLIPSimilarityReward(CLIPEmbedder(_tiny_clip().double())),
    "pickscore": lambda tmp: CLIPSimilarityReward(CLIPEmbedder(_tiny_clip().double()), use_logit_scale=True),
    "aesthetic": lambda tmp: AestheticReward(CLIPEmbedder(_tiny_clip().double()), MLPHead().double()),
    "hpsv2": lambda tmp: _hps(),
    "imagereward": _imagereward,
    "world_clipscore": lambda tmp: _world_clipscore(),
    "world_preference": lambda tmp: _world_preference(),
    "world_quality_soft": lambda tmp: WorldSoftQualityReward(),
}


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_gradient_matches_finite_differences(name: str, tmp_path: Path) -> None:
    reward = SCORERS[name](tmp_path)
    generator = torch.Generator().manual_seed(1)
    images = (0.25 + 0.5 * torch.rand(2, 3, 64, 64, generator=generator, dtype=torch.float64)).requires_grad_()
    weights = torch.tensor([0.7, -1.3], dtype=torch.float64)
    direction = torch.randn(images.shape, generator=generator, dtype=torch.float64)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return (weights * reward.differentiable(x, PROMPTS)).sum()

    objective(images).backward()
    analytic = (images.grad * direction).sum()
    epsilon = 1e-5
    with torch.no_grad():
        numeric = (objective(images + epsilon * direction) - objective(images - epsilon * direction)) / (2 * epsilon)
    assert analytic.abs() > 1e-8, "a zero gradient would make the check vacuous"
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_no_grad_path_scores_the_same(name: str, tmp_path: Path) -> None:
    reward = SCORERS[name](tmp_path)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    prompts = [*PROMPTS, "a small yellow square"]
    fast = reward(images, prompts)
    assert fast.dtype == torch.float32 and not fast.requires_grad and fast.shape == (3,)
    torch.testing.assert_close(fast, reward.differentiable(images, prompts).float().detach())


def test_registry_marks_exactly_the_rewards_with_a_gradient() -> None:
    assert set(differentiable_rewards()) == set(SCORERS) | {"hpsv2_1"}
    without = {"jpeg_compressibility", "world_alignment", "world_quality", "world_score", "hand", "face"}
    assert without <= set(REWARDS) - set(differentiable_rewards())


def test_weighted_sum_keeps_the_graph_and_logs_zero_weight_terms_without_one() -> None:
    class Brightness(DifferentiableReward):
        def differentiable(self, images: torch.Tensor, prompts) -> torch.Tensor:
            return images.mean(dim=(1, 2, 3))

    reward = WeightedReward([("bright", 2.0, Brightness()), ("jpeg", 0.0, JpegCompressibility())])
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    output = reward.differentiable(images, ["a", "b"])
    output.total.sum().backward()
    torch.testing.assert_close(images.grad, torch.full_like(images, 2.0 / images[0].numel()))
    assert set(output.components) == {"bright", "jpeg"} and not output.components["jpeg"].requires_grad
    with pytest.raises(TypeError, match="not differentiable"):
        WeightedReward([("jpeg", 1.0, JpegCompressibility())]).differentiable(images, ["a", "b"])
