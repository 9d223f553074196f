"""Reward registry: the names users type, mapped to factories that build a `RewardFn`.

A new reward is one module in this package plus one line in `REWARDS`. Factories take the device and
dtype the scorer should run in and import heavy dependencies inside themselves, so that listing or
parsing rewards never loads a model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from texforce.errors import TexforceError
from texforce.rewards.base import RewardFn, RewardOutput, WeightedReward
from texforce.rewards.jpeg import JpegCompressibility, JpegIncompressibility

RewardFactory = Callable[[torch.device, torch.dtype], RewardFn]


def _world_alignment(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.world.reward import WorldAlignmentReward

    return WorldAlignmentReward()


def _clipscore(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.rewards.clip import make_clipscore

    return make_clipscore(device, dtype)


def _pickscore(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.rewards.clip import make_pickscore

    return make_pickscore(device, dtype)


def _aesthetic(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.rewards.clip import make_aesthetic

    return make_aesthetic(device, dtype)


def _hpsv2(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.rewards.hps import make_hpsv2

    return make_hpsv2(device, dtype)


def _hpsv2_1(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.rewards.hps import make_hpsv2_1

    return make_hpsv2_1(device, dtype)


def _imagereward(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.rewards.imagereward import make_imagereward

    return make_imagereward(device, dtype)


def _hand(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.rewards.detectors import make_hand

    return make_hand(device, dtype)


def _face(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.rewards.detectors import make_face

    return make_face(device, dtype)


def _world_clipscore(device: torch.device, dtype: torch.dtype) -> RewardFn:
    from texforce.world.reward import WorldClipScoreReward

    return WorldClipScoreReward()


REWARDS: dict[str, RewardFactory] = {
    "jpeg_compressibility": lambda device, dtype: JpegCompressibility(),
    "jpeg_incompressibility": lambda device, dtype: JpegIncompressibility(),
    "world_alignment": _world_alignment,
    "world_clipscore": _world_clipscore,
    "clipscore": _clipscore,
    "pickscore": _pickscore,
    "aesthetic": _aesthetic,
    "hpsv2": _hpsv2,
    "hpsv2_1": _hpsv2_1,
    "imagereward": _imagereward,
    "hand": _hand,
    "face": _face,
}

REWARD_DESCRIPTIONS: dict[str, str] = {
    "jpeg_compressibility": "minus the JPEG size in kB (quality 95); DDPO's compressibility task",
    "jpeg_incompressibility": "the JPEG size in kB (quality 95); DDPO's incompressibility task",
    "world_alignment": "offline world: exact prompt-image alignment in [0, 1] from scene analysis",
    "world_clipscore": "offline world: learned reward, cosine of the world CLIP's image and text embeddings",
    "clipscore": "cosine of CLIP ViT-L/14 image and prompt embeddings (openai/clip-vit-large-patch14)",
    "pickscore": "PickScore v1: human preference, exp(logit_scale) * cosine, about 15..25",
    "aesthetic": "LAION aesthetic predictor v2 (CLIP ViT-L/14 + MLP), about 1..10; ignores the prompt",
    "hpsv2": "HPS v2.0 human preference: cosine of its ViT-H-14 image and prompt embeddings, about 0.2..0.35",
    "hpsv2_1": "HPS v2.1 human preference: as hpsv2, with the authors' retrained v2.1 weights",
    "imagereward": "ImageReward v1.0 human preference (BLIP), standardised: mean 0, std 1 on its data",
    "hand": "hand presence: the best palm-detection confidence in [0, 1] (MediaPipe palm detector)",
    "face": "face presence: the best face-detection confidence in [0, 1] (MediaPipe BlazeFace short range)",
}


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


def build_reward(spec: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> WeightedReward:
    """Build the weighted reward described by `spec`, e.g. `jpeg_compressibility:1.0+aesthetic:0.5`."""
    device = torch.device(device)
    return WeightedReward([(name, w, REWARDS[name](device, dtype)) for name, w in parse_reward_spec(spec)])


__all__ = ["REWARDS", "RewardFn", "RewardOutput", "WeightedReward", "build_reward", "parse_reward_spec"]
