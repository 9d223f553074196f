"""Training configuration: nested dataclasses, loaded from YAML plus `key=value` overrides, then validated.

Defaults live here and only here (they follow trl's DDPOConfig, which the official TexForce code uses).
Every bad value fails at load time with a one-line `TexforceError` that says what to change.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from texforce.errors import TexforceError

TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class ModelConfig:
    """Which base pipeline to load and how to hold its frozen weights."""

    base: str = "texforce/tiny-random"  # hub id, local folder, or a built-in: texforce/tiny-random
    revision: str | None = None
    dtype: str = "bf16"  # frozen weights on GPU: bf16 | fp16 | fp32 (always fp32 on CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    attention: str = "sdpa"  # sdpa: torch's scaled_dot_product_attention | math: the plain softmax(QKᵀ)V reference
    channels_last: bool = False  # U-Net and VAE weights in channels-last memory format (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the U-Net (compiled at its first call: minutes for SD on a GPU)


@dataclass
class LoraConfig:
    """One LoRA adapter: where it goes, its size and its learning rate."""

    use: bool = True
    rank: int = 16
    alpha: float = 16.0
    init: str = "gaussian"  # gaussian | default (peft's kaiming-A, zero-B)
    target_modules: list[str] = field(default_factory=lambda: list(TEXT_LORA_TARGETS))
    learning_rate: float = 3e-4


@dataclass
class UNetLoraConfig(LoraConfig):
    """The optional U-Net adapter (for comparison with, or joint training beside, the text encoder's)."""

    use: bool = False
    target_modules: list[str] = field(default_factory=lambda: list(UNET_LORA_TARGETS))


@dataclass
class TextLora2Config:
    """SDXL's second text encoder (OpenCLIP bigG): `text_lora` applies to it too, except what is set here."""

    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None


@dataclass
class SampleConfig:
    """The DDIM sampler that generates the trajectories PPO learns from."""

    num_steps: int = 50
    eta: float = 1.0
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    resolution: int | None = None  # pixels; None = the model's native size
    batch_size_per_device: int = 8
    num_batches_per_epoch: int = 4


@dataclass
class TrainConfig:
    """What every algorithm shares: which algorithm, epochs, micro-batches, the optimizer and its schedule."""

    algorithm: str = "ddpo"  # ddpo | backprop (see texforce.algorithms)
    num_epochs: int = 100
    batch_size_per_device: int = 4  # samples per micro-batch of the update
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    lr_schedule: str = "constant"  # constant | cosine (both after a linear warm-up)
    lr_warmup_steps: int = 0
    use_lora_for_negative: bool = True  # encode the negative prompt through the LoRA text encoder too
    max_nonfinite_fraction: float = 0.1  # NaN/inf rewards are dropped; above this fraction an epoch aborts


@dataclass
class DDPOConfig:
    """DDPO (Black et al. 2023), TexForce's algorithm: PPO's clipped ratio over the recorded denoising chains."""

    num_inner_epochs: int = 1
    timestep_fraction: float = 1.0
    clip_range: float = 1e-4
    adv_clip_max: float = 10.0
    use_cfg: bool = True  # classifier-free guidance in the update, as at sampling
    # trained timesteps per U-Net call: k of each sample's steps go through the U-Net as one batch of k × micro-batch
    # (the same loss and gradient as one call per step; faster on the CPU, k times the activation memory)
    timesteps_per_call: int = 1


@dataclass
class BackpropConfig:
    """Direct reward back-propagation (DRaFT-K, AlignProp): the reward's gradient flows through the VAE decoder
    and the last `num_grad_steps` sampling steps into the LoRA weights; earlier steps run without a graph."""

    num_grad_steps: int = 1  # K: how many of the last sampling steps keep their graph
    random_truncation: bool = False  # AlignProp: K drawn uniformly from 1..num_grad_steps per micro-batch
    gradient_checkpointing: bool = True  # recompute each U-Net call and the VAE decoder in the backward pass


@dataclass
class AdvantageConfig:
    """How rewards become advantages."""

    mode: str = "per_prompt"  # per_prompt | batch | group
    buffer_size: int = 32  # per_prompt: rewards kept per prompt across epochs
    min_count: int = 16  # per_prompt: below this, the batch's statistics are used
    group_size: int = 4  # group (GRPO-style): images per prompt per epoch, normalised within their group


@dataclass
class PromptConfig:
    """Training and held-out evaluation prompts: a built-in set name or a file (.txt / .json)."""

    train: str = "animals"
    eval: str | None = None  # None = the held-out part of the training set


@dataclass
class EvalConfig:
    """Fixed-seed evaluation before and after training (deterministic DDIM, the sampler's steps and guidance)."""

    num_prompts: int = 8
    num_seeds: int = 2
    seed: int = 1234
    reward: str | None = None  # the judge; None = the training reward


@dataclass
class LogConfig:
    """Where metrics go besides `metrics.jsonl`: TensorBoard (RUN/tensorboard) and, optionally, wandb."""

    tensorboard: bool = True
    wandb: bool = False  # needs `pip install wandb`
    wandb_project: str = "texforce"


@dataclass
class RunConfig:
    """Everything one `texforce train` run needs."""

    seed: int = 0
    output_dir: str = "runs"
    run_name: str | None = None  # None = a timestamp
    reward: str = "jpeg_compressibility"
    checkpoint_every: int = 1  # epochs
    keep_checkpoints: int = 2
    model: ModelConfig = field(default_factory=ModelConfig)
    text_lora: LoraConfig = field(default_factory=LoraConfig)
    text_lora_2: TextLora2Config = field(default_factory=TextLora2Config)
    unet_lora: UNetLoraConfig = field(default_factory=UNetLoraConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ddpo: DDPOConfig = field(default_factory=DDPOConfig)
    backprop: BackpropConfig = field(default_factory=BackpropConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def text_lora_of(self, encoder: int) -> LoraConfig:
        """The adapter of text encoder `encoder` (0; SDXL's second is 1): `text_lora`, with `text_lora_2`'s overrides
        for the second."""
        if encoder == 0:
            return self.text_lora
        overrides = {k: v for k, v in dataclasses.asdict(self.text_lora_2).items() if v is not None}
        return dataclasses.replace(self.text_lora, **overrides)

    @property
    def num_train_timesteps(self) -> int:
        """How many of the sampled denoising steps each sample is trained on (DDPO)."""
        return max(1, int(self.sample.num_steps * self.ddpo.timestep_fraction))

    @property
    def samples_per_epoch_per_device(self) -> int:
        return self.sample.batch_size_per_device * self.sample.num_batches_per_epoch


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a config."""
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a `RunConfig` from a nested dict (e.g. a parsed YAML file)."""
    config = _build(RunConfig, data, prefix="")
    validate(config)
    return config


def builtin_configs() -> dict[str, Path]:
    """The configs shipped in `texforce/configs/`, by name (`default`, `sd15_jpeg`, …)."""
    folder = Path(__file__).parent / "configs"
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
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = data.setdefault(key, {})
        if not isinstance(child, dict):
            raise TexforceError(f"cannot set {'.'.join(keys)}: {key} is not a section")
        data = child
    data[keys[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise TexforceError(f"{prefix.rstrip('.') or 'config'} must be a section (mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise TexforceError(f"unknown config key {prefix}{key}{_suggest(prefix, str(key), list(fields))}")
    values = {}
    for name in fields:
        if name not in data:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, data[name], f"{prefix}{name}.")
        else:
            values[name] = _coerce(data[name], hint, f"{prefix}{name}")
    return cls(**values)


def _config_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config (`train.clip_range`, …), for suggestions across sections."""
    cls = cls or RunConfig
    hints, keys = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        keys += _config_keys(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else [prefix + f.name]
    return keys


def _suggest(prefix: str, key: str, fields: list[str]) -> str:
    """'; did you mean …?': the closest key in this section, else keys of that (or a close) name elsewhere."""
    close = [prefix + k for k in difflib.get_close_matches(key, fields, n=1, cutoff=0.8)]
    if not close:
        everywhere = _config_keys()
        leaves = {k.rsplit(".", 1)[-1] for k in everywhere}
        names = [key] if key in leaves else difflib.get_close_matches(key, leaves, n=1)
        close = [k for k in everywhere if names and k.rsplit(".", 1)[-1] == names[0]]
    close = close or [prefix + k for k in difflib.get_close_matches(key, fields, n=1)]
    return f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(fields)}"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                return _coerce(value, option, key)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise TexforceError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if hint is float and isinstance(value, str):  # YAML reads "2e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise TexforceError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TexforceError(message)


def validate(config: RunConfig) -> None:
    """Range and consistency checks; each failure names the key and what to change."""
    s, t, a, d, b = config.sample, config.train, config.advantage, config.ddpo, config.backprop
    from texforce.algorithms import ALGORITHMS

    _check(t.algorithm in ALGORITHMS, f"train.algorithm must be one of {', '.join(ALGORITHMS)}, got {t.algorithm!r}")
    _check(config.model.dtype in ("bf16", "fp16", "fp32"), "model.dtype must be bf16, fp16 or fp32")
    _check(
        config.ddpo.timesteps_per_call >= 1,
        f"ddpo.timesteps_per_call must be >= 1, got {config.ddpo.timesteps_per_call}",
    )
    _check(
        config.model.attention in ("sdpa", "math"),
        f"model.attention must be sdpa or math, got {config.model.attention!r}",
    )
    _check(config.text_lora.use or config.unet_lora.use, "nothing to train: set text_lora.use or unet_lora.use")
    for name in ("text_lora", "unet_lora"):
        lora: LoraConfig = getattr(config, name)
        _check(lora.rank >= 1, f"{name}.rank must be >= 1, got {lora.rank}")
        _check(lora.alpha > 0, f"{name}.alpha must be > 0, got {lora.alpha}")
        _check(lora.learning_rate > 0, f"{name}.learning_rate must be > 0, got {lora.learning_rate}")
        _check(lora.init in ("gaussian", "default"), f"{name}.init must be gaussian or default")
        _check(bool(lora.target_modules), f"{name}.target_modules must not be empty")
    second = config.text_lora_2
    _check(second.rank is None or second.rank >= 1, f"text_lora_2.rank must be >= 1, got {second.rank}")
    _check(second.alpha is None or second.alpha > 0, f"text_lora_2.alpha must be > 0, got {second.alpha}")
    _check(second.target_modules != [], "text_lora_2.target_modules must not be empty (unset: as text_lora's)")
    _check(s.num_steps >= 1, f"sample.num_steps must be >= 1, got {s.num_steps}")
    if t.algorithm == "ddpo":
        _check(
            s.eta > 0, f"sample.eta must be > 0 for DDPO (a deterministic step has no log-probability), got {s.eta}"
        )
    _check(s.eta >= 0, f"sample.eta must be >= 0, got {s.eta}")
    _check(s.guidance_scale >= 0, f"sample.guidance_scale must be >= 0 (<= 1: no guidance), got {s.guidance_scale}")
    _check(
        s.resolution is None or (s.resolution > 0 and s.resolution % 8 == 0),
        f"sample.resolution must be a positive multiple of 8, got {s.resolution}",
    )
    _check(s.batch_size_per_device >= 1, "sample.batch_size_per_device must be >= 1")
    _check(s.num_batches_per_epoch >= 1, "sample.num_batches_per_epoch must be >= 1")
    _check(t.num_epochs >= 0, f"train.num_epochs must be >= 0, got {t.num_epochs}")
    _check(t.batch_size_per_device >= 1, "train.batch_size_per_device must be >= 1")
    _check(t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1")
    _check(d.num_inner_epochs >= 1, "ddpo.num_inner_epochs must be >= 1")
    _check(0 < d.timestep_fraction <= 1, f"ddpo.timestep_fraction must be in (0, 1], got {d.timestep_fraction}")
    _check(d.clip_range > 0, f"ddpo.clip_range must be > 0, got {d.clip_range}")
    _check(d.adv_clip_max > 0, f"ddpo.adv_clip_max must be > 0, got {d.adv_clip_max}")
    _check(
        1 <= b.num_grad_steps <= s.num_steps,
        f"backprop.num_grad_steps must be in [1, sample.num_steps={s.num_steps}], got {b.num_grad_steps}",
    )
    _check(t.max_grad_norm > 0, f"train.max_grad_norm must be > 0, got {t.max_grad_norm}")
    _check(t.lr_schedule in ("constant", "cosine"), "train.lr_schedule must be constant or cosine")
    _check(t.lr_warmup_steps >= 0, "train.lr_warmup_steps must be >= 0")
    _check(0 <= t.adam_beta1 < 1 and 0 <= t.adam_beta2 < 1, "train.adam_beta1/adam_beta2 must be in [0, 1)")
    _check(t.adam_weight_decay >= 0 and t.adam_epsilon > 0, "train.adam_weight_decay >= 0, adam_epsilon > 0")
    samples = config.samples_per_epoch_per_device
    per_step = t.batch_size_per_device * t.gradient_accumulation_steps
    _check(
        samples % t.batch_size_per_device == 0,
        f"train.batch_size_per_device ({t.batch_size_per_device}) must divide the samples per epoch "
        f"(sample.batch_size_per_device × sample.num_batches_per_epoch = {samples})",
    )
    _check(
        (samples // t.batch_size_per_device) % t.gradient_accumulation_steps == 0,
        f"train.gradient_accumulation_steps ({t.gradient_accumulation_steps}) must divide the "
        f"{samples // t.batch_size_per_device} micro-batches per epoch (samples {samples} / "
        f"train.batch_size_per_device {t.batch_size_per_device}); optimizer steps of {per_step} samples",
    )
    _check(
        a.mode in ("per_prompt", "batch", "group"),
        f"advantage.mode must be per_prompt, batch or group, got {a.mode!r}",
    )
    _check(
        a.mode != "group" or (a.group_size >= 2 and samples % a.group_size == 0),
        f"advantage.group_size ({a.group_size}) must be >= 2 and divide the samples per epoch ({samples})",
    )
    _check(
        a.buffer_size >= 1 and 1 <= a.min_count <= a.buffer_size,
        "advantage.min_count must be in [1, advantage.buffer_size]",
    )
    _check(config.checkpoint_every >= 1, "checkpoint_every must be >= 1")
    _check(config.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
    _check(
        config.eval.num_prompts >= 0 and config.eval.num_seeds >= 1,
        "eval.num_prompts >= 0, eval.num_seeds >= 1",
    )
    _check(
        0 <= t.max_nonfinite_fraction < 1,
        f"train.max_nonfinite_fraction must be in [0, 1), got {t.max_nonfinite_fraction}",
    )
    _check(
        not config.log.wandb or importlib.util.find_spec("wandb") is not None,
        "log.wandb=true but wandb is not installed: pip install wandb, or set log.wandb=false",
    )
    from texforce.prompts import check_prompt_source, load_prompt_set
    from texforce.rewards import check_prompts, differentiable_rewards, parse_reward_spec

    terms = parse_reward_spec(config.reward)
    if config.eval.reward is not None:
        parse_reward_spec(config.eval.reward)
    if t.algorithm == "backprop":
        differentiable = differentiable_rewards()
        fixed = [name for name, weight in terms if name not in differentiable and weight != 0]
        _check(
            not fixed,
            f"reward {', '.join(fixed)} is not differentiable, so train.algorithm=backprop cannot use it; "
            f"differentiable rewards: {', '.join(differentiable)} (or train.algorithm=ddpo)",
        )
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
