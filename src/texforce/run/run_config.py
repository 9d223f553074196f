"""The whole config of a run: the sections every run shares (`texforce.config`) plus each algorithm's own
(`texforce.algorithms.ALGORITHMS`), loaded from YAML and `key=value` overrides, then validated.

Every bad value fails at load time with a one-line `TexforceError` that says what to change.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from texforce.algorithms import ALGORITHMS, own_sections
from texforce.config import SharedConfig, to_dict
from texforce.config.schema import build, check, check_values, config_keys
from texforce.errors import TexforceError
from texforce.prompts import check_prompt_source, load_prompt_set
from texforce.prompts.styles import get_style
from texforce.rewards import check_prompts, parse_reward_spec


def _with_algorithm_sections(cls: type) -> type:
    """Add every registered algorithm's config sections to `cls` as fields with their defaults (before @dataclass)."""
    annotations = dict(inspect.get_annotations(cls))
    taken = {f.name for f in dataclasses.fields(SharedConfig)}
    for name, algorithm in ALGORITHMS.items():
        for key, section in algorithm.sections.items():
            if key in taken or key in annotations:
                raise TypeError(f"algorithm {name}'s config section {key!r} is taken")
            annotations[key] = section
            setattr(cls, key, dataclasses.field(default_factory=section))
    cls.__annotations__ = annotations
    return cls


@dataclass
@_with_algorithm_sections
class RunConfig(SharedConfig):
    """Everything one `texforce train` run needs: the shared sections, then each algorithm's own (`ddpo`,
    `advantage`, `backprop`)."""


# allowed values that come from a registry rather than from the key's declaration
REGISTRY_CHOICES = {"train.algorithm": tuple(ALGORITHMS)}


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a `RunConfig` from a nested dict (e.g. a parsed YAML file)."""
    config = build(RunConfig, data, RunConfig)
    validate(config)
    return config


def builtin_configs() -> dict[str, Path]:
    """The configs shipped in `texforce/configs/`, by name (`default`, `sd15_jpeg`, …)."""
    folder = Path(__file__).parents[1] / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the shipped config of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_configs()
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]
    if path.stem in builtin:  # e.g. configs/sd15_jpeg.yaml: the shipped ones are addressed by name
        raise TexforceError(f"config not found: {name_or_path} is not a file; the shipped config is named {path.stem}")
    raise TexforceError(
        f"config not found: {name_or_path} is neither a file nor a built-in config ({', '.join(builtin)})"
    )


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML config (a path or a built-in name; None = dataclass defaults) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise TexforceError(f"config file {path} is not valid YAML: {error}".replace("\n", " ")) from None
        if not isinstance(data, dict):
            raise TexforceError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise TexforceError(f"override {override!r} must look like section.key=value")
        _set_path(data, key.strip().split("."), yaml.safe_load(text) if text.strip() else None)
    return from_dict(data)


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (what `load_config` reads back)."""
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = data.setdefault(key, {})
        if not isinstance(child, dict):
            raise TexforceError(f"cannot set {'.'.join(keys)}: {key} is not a section")
        data = child
    data[keys[-1]] = value


def validate(config: RunConfig) -> None:
    """Each key's allowed values, the checks across keys, those of the chosen algorithm, then the rewards and
    prompt files; each failure names the key and what to change."""
    check_values(config, config_keys(RunConfig), REGISTRY_CHOICES)
    s, t = config.sample, config.train
    check(config.text_lora.use or config.unet_lora.use, "nothing to train: set text_lora.use or unet_lora.use")
    styles = config.eval.styles
    check(bool(styles) and styles[0] == "plain", f"eval.styles must start with plain, got {styles}")
    for key, listed in (("eval.styles", styles), ("prompts.train_styles", config.prompts.train_styles)):
        check(bool(listed), f"{key} must name at least one style")
        check(len(set(listed)) == len(listed), f"{key} lists a style twice: {listed}")
        for style in listed:
            try:
                get_style(style)
            except TexforceError as error:
                raise TexforceError(f"{key}: {error}") from None
    check(
        config.model.dtype != "fp16",
        "model.dtype=fp16 cannot train (no loss scaling: DDPO's small gradients flush to zero in fp16); "
        "use model.dtype=bf16, or fp32 on a GPU without bf16",
    )
    for name in ("text_lora", "unet_lora", "text_lora_2"):
        modules = getattr(config, name).target_modules
        check(modules is None or bool(modules), f"{name}.target_modules must not be empty")
    check(bool(config.text_lora.t5_target_modules), "text_lora.t5_target_modules must not be empty")
    check(
        s.resolution is None or (s.resolution > 0 and s.resolution % 8 == 0),
        f"sample.resolution must be a positive multiple of 8, got {s.resolution}",
    )
    samples = config.samples_per_epoch_per_device
    check(
        samples % t.batch_size_per_device == 0,
        f"train.batch_size_per_device ({t.batch_size_per_device}) must divide the samples per epoch "
        f"(sample.batch_size_per_device × sample.num_batches_per_epoch = {samples})",
    )
    check(
        (samples // t.batch_size_per_device) % t.gradient_accumulation_steps == 0,
        f"train.gradient_accumulation_steps ({t.gradient_accumulation_steps}) must divide the "
        f"{samples // t.batch_size_per_device} micro-batches per epoch (samples {samples} / "
        f"train.batch_size_per_device {t.batch_size_per_device}); optimizer steps of "
        f"{t.batch_size_per_device * t.gradient_accumulation_steps} samples",
    )
    check(
        not config.log.wandb or importlib.util.find_spec("wandb") is not None,
        "log.wandb=true but wandb is not installed: pip install wandb, or set log.wandb=false",
    )
    parse_reward_spec(config.reward)
    if config.eval.reward is not None:
        parse_reward_spec(config.eval.reward)
    algorithm = ALGORITHMS[t.algorithm]
    algorithm.check_config(config, **own_sections(algorithm, config))
    for key in ("train", "eval"):  # read the files now: an empty or undecodable one fails before any output
        source = getattr(config.prompts, key)
        if source is None:
            continue
        check_prompt_source(source, f"prompts.{key}")
        try:
            prompt_set = load_prompt_set(source)
        except TexforceError as error:
            raise TexforceError(f"prompts.{key}: {error}") from None
        for reward in dict.fromkeys([config.reward, config.eval.reward or config.reward]):  # trains, judges
            check_prompts(reward, list(dict.fromkeys(prompt_set.train + prompt_set.eval)), f"prompts.{key}")
