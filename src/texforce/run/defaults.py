"""What `sample`, `eval`, `score` and `fuse` use when not told: the base model an adapter records (else the embedded
default's, the offline world), and the sampler settings, prompts and reward that fit that base: the shipped config
that names it, else the library config with its family's published sampler settings. Nothing here holds a number of
its own: they come from `configs/*.yaml`, the config dataclasses and `bases.families.FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from texforce.adapters.files import adapter_base
from texforce.bases.families import Family, detect_family
from texforce.bases.loading import WORLD, WORLD_FLOW
from texforce.run.run_config import RunConfig, builtin_configs, load_config


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


@dataclass(frozen=True)
class BaseDefaults:
    """What `sample` and `eval` use for a base when not told: a config (prompts, reward, `sample.num_steps`,
    `sample.guidance_scale`, `model.max_sequence_length`), the images per pipeline call (None: all at once), and
    where the sampler settings came from, in words."""

    config: RunConfig
    batch_size: int | None
    source: str

    def describe(self, steps: int, guidance: float, batch_size: int | None, flags: Mapping[str, object]) -> str:
        """One line: the settings used (`flags`: each sampler flag and its value, None when not given; those given
        win) and where the rest came from."""
        told = [flag for flag, value in flags.items() if value is not None]
        length = self.config.model.max_sequence_length
        parts = [
            f"{steps} step{'s' * (steps != 1)}",
            f"guidance {guidance:g}",
            *([f"T5 length {length}"] if length else []),
        ]
        parts.append(f"batch {batch_size or 'all'}")
        flags = f"; {', '.join(told)} as given" if told else ""
        return f"sampler: {', '.join(parts)} — from {self.source}{flags}"


def batch_size_for(base: str, family: Family | None = None) -> int | None:
    """Images per pipeline call for `base`: its family's (`family`, else detected), None (all at once) for the
    offline world's models."""
    if base in (WORLD, WORLD_FLOW):
        return None
    return (family or detect_family(base).family).batch_size


def shipped_config(base: str) -> tuple[str, RunConfig] | None:
    """The shipped config that names `base` as its model: the embedded default if it does, else one trained on the
    general prompts (`animals`) before one of a single task (`sd14_hand`), then by name."""
    library_prompts = RunConfig().prompts.train
    named = [(name, load_config(name)) for name in builtin_configs()]
    named = [(name, config) for name, config in named if config.model.base == base]
    named.sort(key=lambda item: (item[0] != "default", item[1].prompts.train != library_prompts, item[0]))
    return named[0] if named else None


def defaults_for(base: str) -> BaseDefaults:
    """The defaults of `base`: the shipped config that names it (T5 length and batch filled in from its family),
    else the library's config with the sampler settings of the base's family (`bases.families.FAMILIES`). The offline
    world's models render every image at once."""
    detection = detect_family(base)
    family = detection.family
    shipped = shipped_config(base)
    if shipped is not None:
        name, config = shipped
        source = f"configs/{name}.yaml, which names {base}"
    else:
        config = load_config(None)
        config.model.base = base
        config.sample.num_steps, config.sample.guidance_scale = family.num_steps, family.guidance_scale
        source = f"the {family.name} model card ({family.source}); family read from {detection.evidence}"
    if base not in (WORLD, WORLD_FLOW) and config.model.max_sequence_length is None:
        config.model.max_sequence_length = family.max_sequence_length
    return BaseDefaults(config, batch_size_for(base, family), source)
