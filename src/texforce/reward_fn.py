"""The contract every reward follows, its differentiable form, and the weighted sum that combines several."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from texforce.errors import TexforceError


class RewardFn(Protocol):
    """Scores a batch of images against their prompts.

    `images` is a float tensor (B, 3, H, W) with values in [0, 1], on any device; `prompts` has B strings.
    Returns a float32 tensor (B,) on the CPU, without a graph; higher is better. Scorers batch internally and
    never move data to a device they were not built for.
    """

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """fp32, or fp64 left as it is (gradient checks run the scorers in double precision)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


@dataclass(frozen=True)
class PromptGrammar:
    """The prompts a reward that parses its prompt can read (the world rewards read only world prompts).

    `parse` is "module:function(prompt)", returning None for a prompt outside the grammar; it is cheap (no model),
    so configs and commands check every prompt with it before any sampling. `examples` describes the grammar in
    the error message."""

    parse: str
    examples: str

    def check(self, reward: str, prompts: Sequence[str], where: str) -> None:
        """Raise a one-line `TexforceError` naming the first prompt of `where` that `reward` cannot read."""
        module, _, function = self.parse.partition(":")
        parse = getattr(importlib.import_module(module), function)
        unreadable = [prompt for prompt in prompts if parse(prompt) is None]
        if unreadable:
            raise TexforceError(
                f"{where}: reward {reward} cannot score {len(unreadable)} of the {len(prompts)} prompts, e.g. "
                f"{unreadable[0]!r}; it reads only {self.examples}"
            )


class DifferentiableReward:
    """A reward with a gradient: subclasses implement `differentiable`, and `__call__` is its no-grad, batched
    form (the scoring path of DDPO, evaluation and `texforce score`, as fast as a plain scorer)."""

    batch_size: int = 16

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores (B,) on the images' device, graph kept: d score / d pixels flows back through the scorer."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        size = self.batch_size
        starts = range(0, len(prompts), size)
        scores = [self.differentiable(images[i : i + size], prompts[i : i + size]) for i in starts]
        return torch.cat(scores).float().cpu()


@dataclass(frozen=True)
class RewardOutput:
    """The weighted total (B,) and each component's raw score (B,), keyed by reward name."""

    total: torch.Tensor
    components: dict[str, torch.Tensor]

    @staticmethod
    def concat(outputs: Sequence[RewardOutput]) -> RewardOutput:
        """Several batches' outputs as one, in order."""
        return RewardOutput(
            total=torch.cat([o.total for o in outputs]),
            components={name: torch.cat([o.components[name] for o in outputs]) for name in outputs[0].components},
        )


class WeightedReward:
    """`sum_i weight_i * reward_i(images, prompts)`, keeping every component for logging."""

    def __init__(self, terms: Sequence[tuple[str, float, RewardFn]]) -> None:
        if not terms:
            raise ValueError("a reward needs at least one term")
        self.terms = list(terms)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.terms]

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        components = {name: fn(images, prompts).float().cpu() for name, _, fn in self.terms}
        total = sum(weight * components[name] for name, weight, _ in self.terms)
        return RewardOutput(total=total, components=components)

    def differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        """The total (B,) on the images' device with its graph; components detached on the CPU. Terms of weight
        0 ride along without a gradient (for logging), so they need not be differentiable."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        total = torch.zeros(len(prompts), device=images.device)
        components = {}
        for name, weight, fn in self.terms:
            if weight == 0:
                components[name] = fn(images.detach(), prompts).float().cpu()
                continue
            if not isinstance(fn, DifferentiableReward):
                raise TypeError(f"reward {name!r} is not differentiable")
            scores = fn.differentiable(images, prompts).float().to(images.device)
            total = total + weight * scores
            components[name] = scores.detach().cpu()
        return RewardOutput(total=total, components=components)
