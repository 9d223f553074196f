"""The learned rewards of the offline world: `world_preference` (its ImageReward, built by preference.py) and
`world_clipscore` (the world CLIP's cosine). Both are differentiable, so direct reward backprop can train on them,
and both can be fooled, which the exact judges (exact.py) cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from texforce.reward_fn import DifferentiableReward


class WorldClipScoreReward(DifferentiableReward):
    """Learned reward: cosine similarity of the world CLIP's image and text embeddings, in [-1, 1].

    Uses the shipped image tower (`clip_dir`) and the text tower of the world pipeline (`model_dir`).
    The text tower is the frozen pre-trained one, not a policy being fine-tuned.
    """

    def __init__(self, model_dir: str | Path | None = None, clip_dir: str | Path | None = None) -> None:
        from texforce.world.clip import load_world_clip

        self.clip = load_world_clip(model_dir, clip_dir)
        self.batch_size = 256

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        image_embeds = self.clip.embed_images(images.cpu())
        with torch.no_grad():
            text_embeds = self.clip.embed_texts(list(prompts))
        return (image_embeds * text_embeds.to(image_embeds.dtype)).sum(-1).to(images.device)


class WorldPreferenceReward(DifferentiableReward):
    """The world's ImageReward: a small image+text network trained on exactly judged generated images, in [0, 1].

    Reads the prompt with the frozen text tower of the world pipeline (`model_dir`); the network is in
    `preference_dir` (default: the shipped one).
    """

    def __init__(self, preference_dir: str | Path | None = None, model_dir: str | Path | None = None) -> None:
        from texforce.world import PREFERENCE_DIR
        from texforce.world.judges.preference_model import TextStates, load_preference_model

        self.model = load_preference_model(Path(preference_dir or PREFERENCE_DIR))
        self.text = TextStates(model_dir)
        self.batch_size = 256

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        states, mask = self.text(prompts)
        parameter = next(self.model.parameters())
        return self.model(images.cpu().to(parameter.dtype), states.to(parameter.dtype), mask).to(images.device)


def make_world_clipscore(device: torch.device, dtype: torch.dtype) -> WorldClipScoreReward:
    return WorldClipScoreReward()


def make_world_preference(device: torch.device, dtype: torch.dtype) -> WorldPreferenceReward:
    return WorldPreferenceReward()
