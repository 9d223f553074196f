"""What a sampling chain records (`Trajectory`) and what conditions it (`Conditioning`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class LatentRows:
    """Some (sample, step) latents of B chains: `values` (M, C, h, w) and `index` (B, T+1), the row of `values`
    holding each pair, −1 where it is not held. `latents[rows, steps]` reads like the dense (B, T+1, C, h, w)."""

    values: torch.Tensor
    index: torch.Tensor

    def __getitem__(self, key: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        positions = self.index[key]
        if bool((positions < 0).any()):
            raise IndexError("a (sample, step) latent that this process was not sent")
        return self.values[positions]


@dataclass
class Trajectory:
    """One batch of sampled denoising chains; everything PPO needs to replay them.

    prompts: B strings; prompt_ids (B, L) token ids of every tokenizer side by side (SD: one, L = 77; SDXL: two,
    L = 2 × 77), which the update re-encodes with gradients;
    latents (B, T+1, C, h, w) from pure noise to the final latent (after a multi-process gather: `LatentRows`,
    only the pairs this process trains on, indexed the same way); log_probs (B, T) of each transition;
    timesteps (T,) in sampling order; images (B, 3, H, W) in [0, 1].
    """

    prompts: list[str]
    prompt_ids: torch.Tensor
    latents: torch.Tensor | LatentRows
    log_probs: torch.Tensor
    timesteps: torch.Tensor
    images: torch.Tensor


@dataclass
class Conditioning:
    """What the U-Net is conditioned on, for B samples: prompt embeddings (B, L, D) and, for SDXL, the pooled
    embeddings (B, P) and size/crop time ids (B, 6) that `StableDiffusionXLPipeline` passes as `added_cond_kwargs`."""

    prompt_embeds: torch.Tensor
    pooled_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return self.prompt_embeds, self.pooled_embeds, self.time_ids

    def tensors(self) -> list[torch.Tensor]:
        """Its tensors, in field order (prompt embeddings first)."""
        return [t for t in self._fields() if t is not None]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        """The same conditioning with `fn` applied to each of its tensors."""
        return Conditioning(*(None if t is None else fn(t) for t in self._fields()))

    def after(self, negative: Conditioning) -> Conditioning:
        """A classifier-free-guidance batch of 2B: `negative`'s rows first, then these."""
        pairs = zip(negative._fields(), self._fields(), strict=True)
        return Conditioning(*(None if n is None else torch.cat([n, p]) for n, p in pairs))

    def unet_kwargs(self, dtype: torch.dtype) -> dict:
        """Keyword arguments of a U-Net call, in `dtype` (SDXL's extras in `added_cond_kwargs`)."""
        kwargs: dict = {"encoder_hidden_states": self.prompt_embeds.to(dtype)}
        if self.pooled_embeds is not None:
            added = {"text_embeds": self.pooled_embeds.to(dtype), "time_ids": self.time_ids.to(dtype)}
            kwargs["added_cond_kwargs"] = added
        return kwargs
