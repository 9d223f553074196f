"""Base models: load a Stable Diffusion, SDXL, SD3 / SD3.5 or FLUX.1 pipeline (hub id, local folder or a built-in),
freeze it, add LoRA.

Built-ins come from `sd.py` and `flow.py` (random weights) and `world.py` with `texforce.world` (the
offline world's model). SD and SDXL denoise with a U-Net on DDIM; SD3 and FLUX with a transformer on flow matching
(`denoiser` gives either).

The frozen parts are kept in half precision on a GPU (bf16, or fp16 for rendering) and in fp32 on the CPU (unless
`model.half_on_cpu`), with fp32 where fp16 overflows (`keep_fp32_parts`); trainable
LoRA weights are always fp32, as diffusers' own LoRA training scripts keep them. `model.attention`,
`model.channels_last` and `model.compile` choose how the frozen parts compute (the same function either way).
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.training_utils import cast_training_params
from peft import LoraConfig as PeftLoraConfig

from texforce.bases.flow import FLOW_BUILT_IN
from texforce.bases.sd import BUILT_IN
from texforce.config import LoraConfig, ModelConfig
from texforce.errors import TexforceError
from texforce.sampling import FluxScheduler

WORLD = "texforce/world"  # the offline world's own Stable Diffusion, shipped in the package
WORLD_FLOW = "texforce/world-flow"  # its flow-matching counterpart: an SD3 transformer on the same CLIP and VAE
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# model.attention: diffusers' processor for the U-Net and VAE, transformers' implementation for the text encoders
ATTENTION = {"sdpa": (AttnProcessor2_0, "sdpa"), "math": (AttnProcessor, "eager")}
COMPILE_BACKEND = "inductor"  # torch.compile's backend for model.compile


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TexforceError(f"model.device is {name!r} but no CUDA GPU is available; use model.device=cpu")
    return device


def frozen_dtype(name: str, device: torch.device, half_on_cpu: bool = False) -> torch.dtype:
    """Half precision on a GPU as configured; fp32 on the CPU (half matmuls there are slow), unless `half_on_cpu`
    asks for the configured dtype there too: the GPU's dtype path, emulated exactly (tests). The meta device stands
    for a GPU (`texforce plan` sizes a GPU run there). Warns when a GPU would emulate bf16 (V100, T4: several
    times slower than fp32)."""
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        warnings.warn(
            f"model.dtype=bf16 on {torch.cuda.get_device_name(device)}, which has no native bf16: it runs several "
            "times slower than fp32; use model.dtype=fp32 there",
            RuntimeWarning,
            stacklevel=2,
        )
    return DTYPES[name] if device.type in ("cuda", "meta") or half_on_cpu else torch.float32


def keep_fp32_parts(pipe: DiffusionPipeline, dtype: torch.dtype) -> None:
    """Put back in fp32 what overflows in `dtype`, as diffusers and transformers do when they load in it: in fp16 the
    VAE when its config says `force_upcast` (SDXL's overflows to NaN), whose decoder then takes its input in fp32,
    and each model's `_keep_in_fp32_modules` (T5's `wo`); in fp16 or bf16 its `_keep_in_fp32_modules_strict`."""
    vae = pipe.vae
    if dtype == torch.float16 and vae.config.force_upcast:
        vae.to(dtype=torch.float32)
        for part in (getattr(vae, "post_quant_conv", None), vae.decoder):
            if part is not None:
                part.register_forward_pre_hook(_inputs_in_fp32)
    for model in pipe.components.values():
        if not isinstance(model, torch.nn.Module):
            continue
        keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
        if dtype == torch.float16:
            keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
        for name, module in model.named_modules():
            if keep & set(name.split(".")):
                module.to(dtype=torch.float32)


def _inputs_in_fp32(module: torch.nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: floating-point inputs cast to fp32 (an fp32 VAE part fed by an fp16 pipeline)."""
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def load_pipeline(
    base: str, revision: str | None = None, dtype: torch.dtype = torch.float32, meta: bool = False
) -> DiffusionPipeline:
    """Load a Stable Diffusion, SDXL, SD3 or FLUX pipeline from a hub id, a local folder or a built-in name, on the
    CPU in `dtype` (read from the files straight into it: no fp32 copy first). SD and SDXL get a DDIM scheduler
    that keeps the model's own timestep spacing (SD-Turbo's and SDXL-Turbo's `trailing`); SD3 and FLUX keep their
    flow-matching scheduler. `meta`: the models built from their configs on the meta device, no weights read or
    held (tokenizers and scheduler real; `texforce/world-flow`'s few-MB transformer is read as it is): the
    architecture, to check or fuse adapters against.

    Built-ins: `texforce/world` (the offline world's model), `texforce/tiny-random`, `texforce/tiny-sdxl-random`,
    `texforce/tiny-sd3-random`, `texforce/tiny-flux-random` (a few MB, random), `texforce/sd15-random`,
    `texforce/sd21-random`, `texforce/sdxl-random`, `texforce/sd3-medium-random`, `texforce/sd35-medium-random`,
    `texforce/sd35-large-random`, `texforce/flux-dev-random`, `texforce/flux-schnell-random` (true architectures,
    random weights).
    """
    builder = BUILT_IN.get(base) or FLOW_BUILT_IN.get(base)
    if builder is not None:
        with init_empty_weights() if meta else nullcontext():
            pipe = builder()
        return with_sampling_scheduler(pipe if meta or dtype == torch.float32 else pipe.to(dtype=dtype))
    if base == WORLD_FLOW:
        from texforce.bases.world import load_world_flow

        return with_sampling_scheduler(load_world_flow().to(dtype=dtype))
    if base == WORLD:
        from texforce.world import MODEL_DIR

        base = str(MODEL_DIR)
    path = Path(base).expanduser()
    if path.exists() and not (path / "model_index.json").is_file():
        raise TexforceError(f"{base} is not a diffusers pipeline folder (no model_index.json in it)")
    try:
        folder = path if path.exists() else Path(DiffusionPipeline.download(base, revision=revision))
        index = json.loads((folder / "model_index.json").read_text())
        cls = _pipeline_class(index)
        extra = {"safety_checker": None, "requires_safety_checker": False} if cls is StableDiffusionPipeline else {}
        if cls is StableDiffusion3Pipeline and index.get("text_encoder_3", [None])[0] is None:
            extra = {"text_encoder_3": None, "tokenizer_3": None}  # saved without T5: diffusers needs them named
        if meta:
            extra |= _meta_models(folder, index)
        pipe = cls.from_pretrained(str(folder), dtype=dtype, **extra)
    except (OSError, ValueError) as error:
        if path.exists():
            raise TexforceError(f"cannot load the pipeline in {base}: {error}".replace("\n", " ")) from None
        from huggingface_hub.constants import HF_HUB_CACHE

        raise TexforceError(
            f"base model {base!r} is neither a local folder nor in the Hugging Face cache ({HF_HUB_CACHE}) "
            f"and cannot be downloaded here{' (HF_HUB_OFFLINE=1)' if os.environ.get('HF_HUB_OFFLINE') else ''}; "
            f"on a machine with internet run `hf download {base}` (then copy the cache), "
            f"or pass a local folder saved with `pipe.save_pretrained(folder)`"
        ) from None
    return with_sampling_scheduler(pipe)


def _meta_models(folder: Path, index: dict) -> dict[str, torch.nn.Module]:
    """The models of a pipeline folder (diffusers' and transformers' classes in `model_index.json`) built from
    their configs on the meta device, by component name."""
    import diffusers
    import transformers

    models = {}
    for name, spec in index.items():
        if name.startswith("_") or name in ("safety_checker", "image_encoder") or not isinstance(spec, list):
            continue
        library = {"diffusers": diffusers, "transformers": transformers}.get(spec[0])
        cls = getattr(library, spec[1], None) if library is not None else None
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            continue  # tokenizers, schedulers, image processors: small, loaded as they are
        with init_empty_weights():
            if library is diffusers:
                models[name] = cls.from_config(cls.load_config(folder / name))
            else:
                models[name] = cls._from_config(cls.config_class.from_pretrained(folder / name))
    return models


def with_sampling_scheduler(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """`pipe` with the scheduler texforce samples by: SD's and SDXL's as DDIM (keeping timestep_spacing,
    steps_offset, …), FLUX's marked as FLUX's (`FluxScheduler`), SD3's as it is."""
    if isinstance(pipe, FluxPipeline):
        pipe.scheduler = FluxScheduler.from_config(pipe.scheduler.config)
    elif not is_flow_pipeline(pipe):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


FLOW_PIPELINES = (StableDiffusion3Pipeline, FluxPipeline)
T5_LENGTH = {StableDiffusion3Pipeline: 256, FluxPipeline: 512}  # each pipeline's default max_sequence_length
PIPELINES = {cls.__name__: cls for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline, *FLOW_PIPELINES)}


def is_flow_pipeline(pipe: DiffusionPipeline) -> bool:
    """SD3 / SD3.5 or FLUX: a transformer on flow matching (else SD / SDXL: a U-Net on DDIM)."""
    return isinstance(pipe, FLOW_PIPELINES)


def denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    """The model that denoises: SD's and SDXL's U-Net, SD3's and FLUX's transformer."""
    return pipe.transformer if is_flow_pipeline(pipe) else pipe.unet


def call_options(
    pipe: DiffusionPipeline, negative_prompt: str | list[str], eta: float, max_sequence_length: int | None = None
) -> dict:
    """The keyword arguments of `pipe(...)` that differ by family: SD and SDXL take the negative prompt (encoded,
    as in training) and DDIM's eta; SD3 the negative prompt (its sampler is the deterministic Euler ODE); FLUX
    neither (its guidance is an embedding, no negative branch). SD3 and FLUX also take the T5 length a run trained
    with (`model.max_sequence_length`; unset: the pipeline's, none for an SD3 built without T5)."""
    if eta > 0 and is_flow_pipeline(pipe):
        raise TexforceError(f"eta {eta}: SD3 and FLUX render by the deterministic flow ODE; use eta 0")
    if not is_flow_pipeline(pipe):
        return {"negative_prompt": negative_prompt, "eta": eta}
    options = {} if isinstance(pipe, FluxPipeline) else {"negative_prompt": negative_prompt}
    if isinstance(pipe, StableDiffusion3Pipeline) and pipe.text_encoder_3 is None:
        max_sequence_length = t5_free_length(pipe, max_sequence_length)
    return options | ({} if max_sequence_length is None else {"max_sequence_length": max_sequence_length})


def t5_free_length(pipe: StableDiffusion3Pipeline, configured: int | None = None) -> int:
    """How many zero T5 tokens follow the CLIP tokens of an SD3 without its T5 (diffusers pads with zeros):
    `configured` if set, else diffusers' 256 (SD3 was trained with T5 dropped to zeros), or none for a model built
    without T5, whose joint width is its CLIPs' (texforce/world-flow, trained on the CLIP tokens alone)."""
    if configured is not None:
        return configured
    clip_width = sum(encoder.config.hidden_size for encoder in text_encoders(pipe).values())
    return 0 if pipe.transformer.config.joint_attention_dim == clip_width else T5_LENGTH[StableDiffusion3Pipeline]


def _pipeline_class(index: dict) -> type[DiffusionPipeline]:
    """The class of a `model_index.json`: SD (1.x, 2.x, SD-Turbo), SDXL (base, SDXL-Turbo), SD3 / SD3.5 (medium,
    large, large-turbo) or FLUX.1 (dev, schnell); others are refused."""
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise TexforceError(f"texforce trains {' and '.join(PIPELINES)} text-to-image models; this one is a {name}")
    return PIPELINES[name]


TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")  # SD: 1; SDXL, FLUX (CLIP, T5): 2; SD3: 3


def text_encoders(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's text encoders by component name: `text_encoder` (SD), `text_encoder_2` too (SDXL: OpenCLIP;
    FLUX: T5), `text_encoder_3` too (SD3: T5)."""
    return {name: getattr(pipe, name) for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None}


def is_t5(encoder: torch.nn.Module) -> bool:
    """A T5 encoder (SD3's `text_encoder_3`, FLUX's `text_encoder_2`), as opposed to a CLIP text tower."""
    return type(encoder).__name__ == "T5EncoderModel"


def prepare_pipeline(
    config: ModelConfig, device: torch.device, pipe: DiffusionPipeline | None = None
) -> DiffusionPipeline:
    """Load the base pipeline in its frozen dtype (or take `pipe`, built already: `texforce plan`'s on the meta
    device), freeze every weight, move it to `device` in its frozen dtype, and apply the attention kernel, memory
    format and compilation of `config`."""
    dtype = frozen_dtype(config.dtype, device, config.half_on_cpu)
    pipe = load_pipeline(config.base, config.revision, dtype) if pipe is None else pipe
    processor, implementation = ATTENTION[config.attention]
    model = denoiser(pipe)
    # SD3's and FLUX's transformers keep their own (joint) attention processors, which call torch's sdpa
    for module in (pipe.vae,) if is_flow_pipeline(pipe) else (model, pipe.vae):
        module.set_attn_processor(processor())
    for encoder in text_encoders(pipe).values():
        if not is_t5(encoder):
            encoder.set_attn_implementation(implementation)
    for module in (model, pipe.vae, *text_encoders(pipe).values()):
        module.requires_grad_(False)
        module.eval()
    pipe.to(device=device, dtype=None if dtype == model.dtype else dtype)
    keep_fp32_parts(pipe, dtype)
    if config.channels_last:
        for module in (model, pipe.vae):
            module.to(memory_format=torch.channels_last)
    if config.compile:
        model.compile(backend=COMPILE_BACKEND)  # in place: still the same object, compiled at its first call
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attention_kernels(pipe: DiffusionPipeline) -> dict[str, str]:
    """Which attention runs in each component: the U-Net's and VAE's processor classes, the text encoders'
    implementation (`AttnProcessor2_0` and `sdpa` call torch's `scaled_dot_product_attention`)."""
    kernels = {
        name: ", ".join(sorted({type(p).__name__ for p in getattr(pipe, name).attn_processors.values()}))
        for name in ("transformer" if is_flow_pipeline(pipe) else "unet", "vae")
    }
    encoders = text_encoders(pipe).items()
    return kernels | {name: encoder.config._attn_implementation for name, encoder in encoders if not is_t5(encoder)}


def peft_lora_config(lora: LoraConfig) -> PeftLoraConfig:
    """The peft `LoraConfig` for one of our adapter configs."""
    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        init_lora_weights="gaussian" if lora.init == "gaussian" else True,
        target_modules=list(lora.target_modules),
        lora_dropout=0.0,
    )


def add_lora(module: torch.nn.Module, lora: LoraConfig, seed: int) -> list[torch.nn.Parameter]:
    """Add a trainable fp32 LoRA adapter to `module` (text encoder or U-Net); return its parameters.

    The seed fixes the adapter's initialisation so that a run is reproducible from its config alone, in any frozen
    dtype: peft draws the adapter in fp32, then moves it to its layer's dtype, so the layers it adapts are fp32
    meanwhile (and cast back after, exactly) and a bf16 base gets the same initial adapter as an fp32 one.
    """
    targets = [
        (layer, layer.weight.dtype)
        for name, layer in module.named_modules()
        if isinstance(getattr(layer, "weight", None), torch.Tensor)
        and any(name == target or name.endswith(f".{target}") for target in lora.target_modules)
    ]
    devices = {p.device for p in module.parameters()}
    with torch.random.fork_rng(devices=[d for d in devices if d.type == "cuda"]):
        torch.manual_seed(seed)
        try:
            for layer, _ in targets:
                layer.to(dtype=torch.float32)
            module.add_adapter(peft_lora_config(lora))
        except ValueError as error:
            raise TexforceError(f"cannot add LoRA to {type(module).__name__}: {error}") from None
        finally:
            for layer, dtype in targets:
                layer.to(dtype=dtype)  # the frozen layer only: its adapter sits beside it, in peft's wrapper
    cast_training_params(module, dtype=torch.float32)
    return [p for p in module.parameters() if p.requires_grad]
