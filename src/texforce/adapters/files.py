"""LoRA adapters on disk: save in the diffusers, PEFT and kohya formats, load any of them (ours or others'), fuse.

Layout of an exported adapter folder (`RUN/lora`, and inside every checkpoint):
    <run name>.safetensors            kohya: the one file for ComfyUI, Forge and AUTOMATIC1111 (`loras/` folder,
                                      strength 1.0): every adapter, T5 and U-Net included, with `.alpha` tensors
    pytorch_lora_weights.safetensors  diffusers: `pipe.load_lora_weights(folder)` (SD, SDXL, SD3, FLUX); the CLIP
                                      encoders' and the U-Net's adapters, alpha kept as metadata
    text_encoder/                     PEFT: `PeftModel.from_pretrained(pipe.text_encoder, folder / "text_encoder")`
    text_encoder_2/                   PEFT, the second text encoder (SDXL's and SD3's OpenCLIP, FLUX's T5)
    text_encoder_3/                   PEFT, SD3's T5
    unet/                             PEFT, only when a U-Net adapter was trained

A T5 adapter is not in the diffusers file: diffusers' SD3 and FLUX loaders read no T5 keys (they would silently skip
them), so `texforce`'s loader (`load_text_adapters`), PEFT or a UI (the kohya file) loads it. The key layouts are in
`formats`: the diffusers file's CLIP keys are `text_encoder.text_model.encoder.layers.…` (transformers 5's
`CLIPTextModel` has no `text_model` level, older stacks need it; diffusers reads both), its U-Net keys in the
attention-processor layout, with only the LoRA metadata every peft version understands.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import CLIPTextModel

from texforce.adapters.conversion import adapter_set_of
from texforce.adapters.formats import (
    DIFFUSERS_WEIGHTS,
    PEFT_CONFIG,
    PEFT_PREFIX,
    PEFT_WEIGHTS,
    write_diffusers,
    write_kohya,
    write_peft,
)
from texforce.bases.loading import TEXT_ENCODERS, is_t5, text_encoders
from texforce.errors import TexforceError
from texforce.files import make_safetensors_readable, save_safetensors, write_folder_atomically


def lora_config_of(module: torch.nn.Module, adapter_name: str = "default") -> PeftLoraConfig:
    return module.peft_config[adapter_name]


def save_adapters(
    folder: Path,
    modules: Mapping[str, torch.nn.Module],
    base_model: str,
    adapter_name: str = "default",
    pipeline_class: type[DiffusionPipeline] | None = None,
    ui_name: str | None = None,
) -> None:
    """Save adapter `adapter_name` of `modules` (by component name: `text_encoder`, `text_encoder_2`,
    `text_encoder_3`, `unet`) into `folder`: a PEFT folder each, the diffusers file for all but a T5, and with
    `ui_name` the kohya file `<ui_name>.safetensors` of them all. `pipeline_class` (default: SDXL's when there is a
    `text_encoder_2`, else SD's) picks the kohya prefixes."""
    if pipeline_class is None:
        pipeline_class = StableDiffusionXLPipeline if "text_encoder_2" in modules else StableDiffusionPipeline
    adapters = adapter_set_of(modules, adapter_name, base_model, pipeline_class.__name__)
    folder.mkdir(parents=True, exist_ok=True)
    for name in modules:
        write_peft(adapters, name, folder / name)
    if any(not is_t5(module) for module in modules.values()):
        write_diffusers(adapters, folder / DIFFUSERS_WEIGHTS)
    if ui_name is not None:
        write_kohya(adapters, folder / f"{ui_name}.safetensors")


def save_pipeline(pipe: DiffusionPipeline, folder: Path) -> None:
    """`pipe.save_pretrained(folder)` (safetensors, in the pipeline's dtype) in files older stacks load correctly
    too: CLIP text encoders' weights under the `text_model.` names transformers 4 needs (transformers 5 maps them
    back; saved without them, transformers 4 silently leaves a random text encoder), and each tokenizer's
    `vocab.json` and `merges.txt` beside `tokenizer.json` (transformers 4's `CLIPTokenizer` reads only those)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    for name, encoder in text_encoders(pipe).items():
        if isinstance(encoder, CLIPTextModel) and not hasattr(encoder, "text_model"):
            for weights in (folder / name).glob("*.safetensors"):
                renamed = {_canonical(key): value for key, value in load_file(weights).items()}
                save_safetensors(renamed, weights, metadata={"format": "pt"})
            index = folder / name / "model.safetensors.index.json"
            if index.is_file():
                data = json.loads(index.read_text())
                data["weight_map"] = {_canonical(k): v for k, v in data["weight_map"].items()}
                index.write_text(json.dumps(data, indent=2) + "\n")
    make_safetensors_readable(folder)
    for name in ("tokenizer", "tokenizer_2"):
        tokenizer = getattr(pipe, name, None)
        if tokenizer is not None:
            tokenizer.backend_tokenizer.model.save(str(folder / name))


def _canonical(key: str) -> str:
    """A CLIP text model's weight name with its `text_model.` level (transformers 5 writes it only for a model it
    loaded from such names)."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def _diffusers_file(path: Path) -> Path | None:
    """The diffusers LoRA file of a user-given path: the file, or the one in an adapter folder or a run's `lora/`."""
    if path.is_file():
        return path
    for candidate in (path, path / "lora"):
        if (candidate / DIFFUSERS_WEIGHTS).is_file():
            return candidate / DIFFUSERS_WEIGHTS
    return None


def _peft_folder(path: Path, component: str) -> Path | None:
    """The PEFT folder of `component` under a user-given path; a bare PEFT folder is the (first) text encoder's or
    the U-Net's, as `PeftModel.from_pretrained(pipe.text_encoder, folder)` reads the official releases."""
    own = [path] if component in ("text_encoder", "unet") else []
    for candidate in (*own, path / component, path / "lora" / component):
        if (candidate / PEFT_CONFIG).is_file():
            return candidate
    return None


def require_adapter(path: str | Path, what: str) -> Path:
    """`path` as a Path; a one-line error, before any model loads, when nothing is there."""
    found = Path(path).expanduser()
    if not found.exists():
        raise TexforceError(f"{what} {path}: adapter not found (a run's final adapters are in RUN/lora)")
    return found


def adapter_base(path: str | Path) -> str | None:
    """The base model an adapter (PEFT folder, exported folder or run) records in its `adapter_config.json`."""
    path = Path(path).expanduser()
    for component in (*TEXT_ENCODERS, "unet"):
        folder = _peft_folder(path, component) if path.is_dir() else None
        if folder is not None:
            return json.loads((folder / PEFT_CONFIG).read_text()).get("base_model_name_or_path")
    return None


def _misfit(adapter: Path, module: torch.nn.Module, base: str | None, error: Exception) -> TexforceError:
    """One line: which base the adapter was trained on, which it was given, and the first cause torch names."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(error).__name__)
    trained_on = adapter_base(adapter.parent if adapter.is_file() else adapter)
    return TexforceError(
        f"adapter {adapter} was trained on {trained_on or 'a base it does not record'} and does not fit the "
        f"{type(module).__name__} of the given base {base or 'model'}: {cause}"
    )


def _normalise_keys(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map others' key layouts onto `module`: strip PEFT's prefix and fit a CLIP text model's `text_model.` level
    to the installed transformers (5's `CLIPTextModel` has none, 4's has it; our folders hold both layouts)."""
    names = {name for name, _ in module.named_modules()}
    normalised = {}
    for key, value in state.items():
        key = key.removeprefix(PEFT_PREFIX)
        module_name = key.split(".lora_")[0]
        if module_name not in names and key.startswith("text_model.") and module_name[11:] in names:
            key = key[len("text_model.") :]
        elif module_name not in names and f"text_model.{module_name}" in names:
            key = f"text_model.{key}"
        normalised[key] = value
    return normalised


def _load_peft(folder: Path, module: torch.nn.Module, adapter_name: str, base: str | None) -> None:
    config = PeftLoraConfig.from_pretrained(str(folder))
    weights = folder / PEFT_WEIGHTS
    if weights.is_file():
        state = load_file(weights)
    elif (folder / "adapter_model.bin").is_file():
        state = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise TexforceError(f"PEFT adapter {folder} has {PEFT_CONFIG} but no {PEFT_WEIGHTS}")
    state = _normalise_keys(state, module)
    try:
        module.add_adapter(config, adapter_name=adapter_name)
        result = set_peft_model_state_dict(module, state, adapter_name=adapter_name)
    except (RuntimeError, ValueError) as error:
        raise _misfit(folder, module, base, error) from None
    if result.unexpected_keys:
        count = len(result.unexpected_keys)
        raise _misfit(folder, module, base, ValueError(f"{count} weights it lacks, e.g. {result.unexpected_keys[0]}"))


def _load_component(
    pipe: DiffusionPipeline, path: Path, component: str, adapter_name: str, base: str | None
) -> Path | None:
    """Load `component`'s LoRA from `path` (PEFT folder or diffusers file) when it holds one; the file or folder
    it came from, else None."""
    module = getattr(pipe, component)
    folder = _peft_folder(path, component) if path.is_dir() else None
    if folder is not None:
        _load_peft(folder, module, adapter_name, base)
        return folder
    weights = _diffusers_file(path)
    if weights is None:
        return None
    try:
        read = pipe.lora_state_dict(str(weights), return_lora_metadata=True)  # SD3's, FLUX's: no alphas
        state, alphas, metadata = read[0], read[1] if len(read) == 3 else None, read[-1]
    except Exception as error:  # diffusers raises many types for foreign files
        raise TexforceError(f"cannot read LoRA file {weights}: {error}".splitlines()[0]) from None
    if not any(k.startswith(f"{component}.") for k in state):
        return None
    try:
        if component == "unet":
            pipe.load_lora_into_unet(state, alphas, module, adapter_name=adapter_name, metadata=metadata)
        else:
            pipe.load_lora_into_text_encoder(
                state, alphas, module, prefix=component, adapter_name=adapter_name, metadata=metadata
            )
    except (RuntimeError, ValueError) as error:
        raise _misfit(weights, module, base, error) from None
    return weights


def _nothing_for(path: Path, what: str) -> TexforceError:
    weights = _diffusers_file(path)
    if weights is None:
        return TexforceError(
            f"no LoRA adapter at {path}: expected {PEFT_CONFIG} (PEFT) or {DIFFUSERS_WEIGHTS} (diffusers) in it"
        )
    return TexforceError(f"{weights} holds no {what} LoRA weights")


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise TexforceError(f"adapter not found: {path}")
    return path


def load_adapter(
    pipe: DiffusionPipeline,
    path: str | Path,
    component: str,
    adapter_name: str = "default",
    base: str | None = None,
) -> None:
    """Load a LoRA for `component` ("text_encoder", "text_encoder_2" or "unet") of `pipe`, in PEFT or any
    diffusers format.

    Other components' weights in a diffusers file are ignored, so `--text-lora` and `--unet-lora` may
    point at two different adapters (the paper's plug-in stacking). `base` names `pipe`'s model in the error of
    an adapter that does not fit it.
    """
    path = _existing(path)
    if _load_component(pipe, path, component, adapter_name, base) is None:
        raise _nothing_for(path, component)


def load_text_adapters(
    pipe: DiffusionPipeline, path: str | Path, adapter_name: str = "default", base: str | None = None
) -> list[str]:
    """Load a text-encoder LoRA (`--text-lora`) into each text encoder of `pipe` it holds weights for: SD's one,
    SDXL's two, SD3's two CLIPs and T5, FLUX's CLIP and T5. Reads our folders and runs, PEFT folders (the official
    `sd-turbo_texforce`) and diffusers files (the official `sdxl-turbo_texforce`). Returns the components loaded."""
    path = _existing(path)
    loaded = [c for c in text_encoders(pipe) if _load_component(pipe, path, c, adapter_name, base) is not None]
    if not loaded:
        raise _nothing_for(path, "text-encoder")
    return loaded


def fuse_adapters(module: torch.nn.Module, adapter_names: Sequence[str], weights: Sequence[float]) -> None:
    """Add adapter `fused` to `module` whose update is exactly sum_i w_i * scale_i * B_i A_i.

    The adapters must share rank and targets. Their A matrices are stacked along the rank and their B
    matrices scaled and stacked, so the fused adapter has rank sum(r_i) and scale 1: no approximation.
    """
    if len(adapter_names) != len(weights) or len(adapter_names) < 2:
        raise TexforceError(f"fusing needs two or more adapters, each with a weight; got {len(weights)} weights")
    configs = [lora_config_of(module, name) for name in adapter_names]
    first = configs[0]
    for name, config in zip(adapter_names[1:], configs[1:], strict=True):
        if config.r != first.r or set(config.target_modules) != set(first.target_modules):
            raise TexforceError(
                f"adapters differ: {adapter_names[0]} has rank {first.r} on {sorted(first.target_modules)}, "
                f"{name} has rank {config.r} on {sorted(config.target_modules)}"
            )
    states = [get_peft_model_state_dict(module, adapter_name=name) for name in adapter_names]
    if any(state.keys() != states[0].keys() for state in states):
        raise TexforceError("adapters cover different layers; they cannot be fused")
    fused = {}
    for key in states[0]:
        if ".lora_A." in key:
            fused[key] = torch.cat([state[key] for state in states], dim=0)
        else:
            parts = [w * (c.lora_alpha / c.r) * s[key] for w, c, s in zip(weights, configs, states, strict=True)]
            fused[key] = torch.cat(parts, dim=1)
    rank = first.r * len(states)
    config = PeftLoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(first.target_modules), lora_dropout=0.0)
    module.add_adapter(config, adapter_name="fused")
    set_peft_model_state_dict(module, fused, adapter_name="fused")


def fuse_adapter_files(base: str, adapters: Sequence[str | Path], weights: Sequence[float], output: Path) -> Path:
    """`texforce fuse`: load text-encoder adapters of `base` (of each text encoder they cover), fuse them, save the
    result in both formats.

    Fusing reads only the adapters, never the frozen weights: the pipeline is built on the meta device, and its
    text encoders get storage that is never filled (`to_empty`), so that the adapters load in fp32 as on a real
    model while the untouched weights take no memory.
    Written to a temporary folder first, so `output` is either complete or absent.
    """
    from texforce.bases.loading import load_pipeline

    pipe = load_pipeline(base, meta=True)
    for encoder in text_encoders(pipe).values():
        encoder.to(dtype=torch.float32)  # a bf16 checkpoint's config builds bf16 layers: the adapters would round
        encoder.to_empty(device="cpu")
    names = [f"adapter{i}" for i in range(len(adapters))]
    covered = [load_text_adapters(pipe, adapter, name, base) for name, adapter in zip(names, adapters, strict=True)]
    if any(components != covered[0] for components in covered):
        raise TexforceError(f"adapters cover different text encoders ({covered}); they cannot be fused")
    for component in covered[0]:
        fuse_adapters(getattr(pipe, component), names, weights)
    fused = {component: getattr(pipe, component) for component in covered[0]}
    write_folder_atomically(
        output, lambda folder: save_adapters(folder, fused, base, "fused", type(pipe), ui_name=output.name)
    )
    return output
