"""Reward registry: the names users type, each a row of `REWARDS` — its factory, what it scores, and whether it
has a gradient (direct reward backprop needs one).

A new reward is one module in this package plus one row here. Factories are `module:function` strings taking the
device and dtype the scorer should run in; they are imported only when the reward is built, so listing or
parsing rewards never loads a model. A reward that parses its prompt names its `PromptGrammar`, checked on every
prompt before any sampling; one built for one image size names it, and `texforce score` fits images to it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from texforce.errors import TexforceError
from texforce.reward_fn import DifferentiableReward, PromptGrammar, RewardFn, RewardOutput, WeightedReward


@dataclass(frozen=True)
class RewardEntry:
    """One registered reward: `factory` ("module:function(device, dtype)"), a one-line description, whether its
    score is differentiable in the image pixels, the prompts it can read (None: any) and the image side it was
    built for (None: any size)."""

    factory: str
    description: str
    differentiable: bool
    grammar: PromptGrammar | None = None
    image_size: int | None = None


WORLD_PROMPTS = PromptGrammar(
    "texforce.world:parse_prompt",
    "world prompts such as 'a red circle', 'three green triangles' or 'a red circle left of a blue square' "
    "(texforce prompt sets world, world_all, world_single, world_count, world_relation)",
)
WORLD_IMAGE_SIZE = 64  # the world model's images (texforce.world.scenes.IMAGE_SIZE)
# Every command (train, eval, sample, score) scores in fp32, whatever dtype the diffusion model runs in: one image
# gets one score everywhere (in bf16 PickScore's exp(logit_scale) is 98.9, not 100, and scores move in the 2nd-3rd
# digit). Reward models are small beside the diffusion model, so fp32 costs little.
REWARD_DTYPE = torch.float32


REWARDS: dict[str, RewardEntry] = {
    "jpeg_compressibility": RewardEntry(
        "texforce.rewards.jpeg:make_compressibility",
        "minus the JPEG size in kB (quality 95); DDPO's compressibility task",
        False,
    ),
    "jpeg_incompressibility": RewardEntry(
        "texforce.rewards.jpeg:make_incompressibility",
        "the JPEG size in kB (quality 95); DDPO's incompressibility task",
        False,
    ),
    "world_alignment": RewardEntry(
        "texforce.world.judges.exact:make_world_alignment",
        "offline world: exact prompt-image alignment in [0, 1] from scene analysis",
        False,
        WORLD_PROMPTS,
        WORLD_IMAGE_SIZE,
    ),
    "world_quality": RewardEntry(
        "texforce.world.judges.exact:make_world_quality",
        "offline world: exact picture quality in [0, 1] from pixels (clean background, palette colours, sharp "
        "edges, no specks); ignores the prompt",
        False,
        image_size=WORLD_IMAGE_SIZE,
    ),
    "world_quality_soft": RewardEntry(
        "texforce.world.judges.exact:make_world_quality_soft",
        "offline world: the soft, differentiable form of world_quality (soft distance to white and the palette)",
        True,
        image_size=WORLD_IMAGE_SIZE,
    ),
    "world_score": RewardEntry(
        "texforce.world.judges.exact:make_world_score",
        "offline world: the headline exact judge, world_alignment x world_quality, in [0, 1]",
        False,
        WORLD_PROMPTS,
        WORLD_IMAGE_SIZE,
    ),
    "world_preference": RewardEntry(
        "texforce.world.judges.learned:make_world_preference",
        "offline world: learned preference in [0, 1], trained on exactly judged generated images (its ImageReward)",
        True,
        WORLD_PROMPTS,
        WORLD_IMAGE_SIZE,
    ),
    "world_clipscore": RewardEntry(
        "texforce.world.judges.learned:make_world_clipscore",
        "offline world: learned reward, cosine of the world CLIP's image and text embeddings",
        True,
        image_size=WORLD_IMAGE_SIZE,
    ),
    "clipscore": RewardEntry(
        "texforce.rewards.clip:make_clipscore",
        "cosine of CLIP ViT-L/14 image and prompt embeddings (openai/clip-vit-large-patch14)",
        True,
    ),
    "pickscore": RewardEntry(
        "texforce.rewards.clip:make_pickscore",
        "PickScore v1: human preference, exp(logit_scale) * cosine, about 15..25",
        True,
    ),
    "aesthetic": RewardEntry(
        "texforce.rewards.clip:make_aesthetic",
        "LAION aesthetic predictor v2 (CLIP ViT-L/14 + MLP), about 1..10; ignores the prompt",
        True,
    ),
    "hpsv2": RewardEntry(
        "texforce.rewards.hps:make_hpsv2",
        "HPS v2.0 human preference: cosine of its ViT-H-14 image and prompt embeddings, about 0.2..0.35",
        True,
    ),
    "hpsv2_1": RewardEntry(
        "texforce.rewards.hps:make_hpsv2_1",
        "HPS v2.1 human preference: as hpsv2, with the authors' retrained v2.1 weights",
        True,
    ),
    "imagereward": RewardEntry(
        "texforce.rewards.imagereward:make_imagereward",
        "ImageReward v1.0 human preference (BLIP), standardised: mean 0, std 1 on its data",
        True,
    ),
    "hand": RewardEntry(
        "texforce.rewards.detectors:make_hand",
        "hand presence: the best palm-detection confidence in [0, 1] (MediaPipe palm detector)",
        False,
    ),
    "face": RewardEntry(
        "texforce.rewards.detectors:make_face",
        "face presence: the best face-detection confidence in [0, 1] (MediaPipe BlazeFace short range)",
        False,
    ),
}


def differentiable_rewards() -> list[str]:
    """Names of the rewards direct backprop can train on."""
    return [name for name, entry in REWARDS.items() if entry.differentiable]


def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
    """Parse `name[:weight]+name[:weight]…` into `[(name, weight), …]`; validates names and weights."""
    terms = []
    for part in spec.replace(" ", "").split("+"):
        if not part:
            raise TexforceError(f"empty term in reward spec {spec!r}; write e.g. 'jpeg_compressibility:1.0'")
        name, _, weight_text = part.partition(":")
        if name not in REWARDS:
            raise TexforceError(f"unknown reward {name!r}; valid rewards: {', '.join(sorted(REWARDS))}")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise TexforceError(f"reward weight {weight_text!r} of {name!r} is not a number") from None
        if any(name == seen for seen, _ in terms):
            raise TexforceError(f"reward {name!r} appears twice in {spec!r}")
        terms.append((name, weight))
    return terms


def check_prompts(spec: str, prompts: Sequence[str], where: str) -> None:
    """Fail now, before any sampling, if a reward of `spec` cannot read one of `prompts` (from `where`, e.g.
    `prompts.train`): the world rewards read only world prompts."""
    for name, _ in parse_reward_spec(spec):
        grammar = REWARDS[name].grammar
        if grammar is not None:
            grammar.check(name, prompts, where)


def image_size(spec: str) -> int | None:
    """The image side the rewards of `spec` were built for (the world's, the only one so far), or None: any size."""
    return next((REWARDS[name].image_size for name, _ in parse_reward_spec(spec) if REWARDS[name].image_size), None)


def load_reward(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = REWARD_DTYPE) -> RewardFn:
    """Build the registered reward `name` on `device` in `dtype` (the commands' is `REWARD_DTYPE`; another is for
    benchmarks and tests)."""
    module, _, function = REWARDS[name].factory.partition(":")
    return getattr(importlib.import_module(module), function)(torch.device(device), dtype)


def build_reward(spec: str, device: torch.device | str = "cpu", dtype: torch.dtype = REWARD_DTYPE) -> WeightedReward:
    """Build the weighted reward described by `spec`, e.g. `jpeg_compressibility:1.0+aesthetic:0.5`."""
    return WeightedReward([(name, w, load_reward(name, device, dtype)) for name, w in parse_reward_spec(spec)])


__all__ = [
    "REWARDS",
    "REWARD_DTYPE",
    "DifferentiableReward",
    "PromptGrammar",
    "RewardEntry",
    "RewardFn",
    "RewardOutput",
    "WeightedReward",
    "build_reward",
    "check_prompts",
    "differentiable_rewards",
    "image_size",
    "load_reward",
    "parse_reward_spec",
]
