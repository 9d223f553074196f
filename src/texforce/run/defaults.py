"""What `sample`, `eval`, `score` and `fuse` use when not told: the base model an adapter records (else the embedded
default's, the offline world), and the sampler settings, prompts and reward of the training config that fits that
base. Nothing here holds a number of its own: they come from `configs/default.yaml` and the config dataclasses.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from texforce.adapters.files import adapter_base
from texforce.run.run_config import RunConfig, load_config


def choose_base(model: str | None, adapters: Iterable[str | Path | None] = ()) -> str:
    """`--model` when given, else the base the first adapter records, else the embedded default's model."""
    if model:
        return model
    for adapter in adapters:
        recorded = adapter_base(adapter) if adapter is not None else None
        if recorded:
            return recorded
    return load_config("default").model.base


def judge(config: RunConfig) -> str:
    """The reward a config judges images with: its evaluation's, else its training reward."""
    return config.eval.reward or config.reward


def config_for(base: str) -> RunConfig:
    """The training config whose sampler settings, prompts and reward fit `base`: the embedded default
    (`texforce train` with no arguments) for its own model, `world_flow` for texforce/world-flow, else the library
    defaults (Stable Diffusion's usual DDIM 50 steps, CFG 7.5, DDPO's animals and JPEG compressibility) with `base`
    as the model."""
    for name in ("default", "world_flow"):
        config = load_config(name)
        if base == config.model.base:
            return config
    config = load_config(None)
    config.model.base = base
    return config
