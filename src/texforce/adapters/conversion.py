"""`texforce export`: read any adapter texforce loads (a run, its `lora/`, a PEFT folder, a diffusers or kohya
file, the official TexForce releases) and write it as kohya, diffusers or PEFT (`formats` has the layouts).

    kohya      one `.safetensors` file: ComfyUI, Forge, AUTOMATIC1111
    diffusers  a folder: `pytorch_lora_weights.safetensors` (`pipe.load_lora_weights(folder)`), a T5's PEFT folder
    peft       a folder: one PEFT folder per component (`PeftModel.from_pretrained(pipe.text_encoder, folder / …)`)
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from texforce.adapters.formats import (
    COMPONENTS,
    DIFFUSERS_WEIGHTS,
    FORMATS,
    PEFT_CONFIG,
    AdapterSet,
    LoraModule,
    canonical_path,
    is_t5_path,
    pattern_value,
    read_lora_file,
    read_peft,
    write_diffusers,
    write_kohya,
    write_peft,
)
from texforce.errors import TexforceError

UNET_PARTS = ("down_blocks.", "up_blocks.", "mid_block.")


def adapter_set_of(
    modules: Mapping[str, torch.nn.Module], adapter_name: str, base: str | None, pipeline: str | None
) -> AdapterSet:
    """The adapters `adapter_name` of live peft-adapted modules, by component name."""
    components, extra = {}, {}
    for component, module in modules.items():
        config = module.peft_config[adapter_name]
        state = get_peft_model_state_dict(module, adapter_name=adapter_name)
        downs = {key.removesuffix(".lora_A.weight"): value for key, value in state.items() if ".lora_A." in key}
        found = {}
        for path, down in downs.items():
            alpha = pattern_value(config.alpha_pattern, path, config.lora_alpha)
            found[canonical_path(component, path)] = LoraModule(down, state[f"{path}.lora_B.weight"], float(alpha))
        components[component] = found
        extra[component] = {k: v for k, v in config.to_dict().items() if k != "base_model_name_or_path"}
    return AdapterSet(components, base, pipeline, extra_config=extra)


def _header_pipeline(folder: Path) -> str | None:
    """The pipeline a texforce kohya file beside the adapters records (our `lora/` folders hold one)."""
    for candidate in sorted(folder.glob("*.safetensors")):
        if candidate.name != DIFFUSERS_WEIGHTS:
            with safe_open(candidate, "pt") as handle:
                pipeline = (handle.metadata() or {}).get("texforce.pipeline")
            if pipeline:
                return pipeline
    return None


def _bare_component(modules: dict[str, LoraModule], folder: Path) -> str:
    """Which component a bare PEFT folder adapts: a U-Net's or a CLIP's (the official `sd-turbo_texforce`)."""
    if all(path.startswith(UNET_PARTS) for path in modules):
        return "unet"
    if any(is_t5_path(path) for path in modules):
        raise TexforceError(
            f"{folder} is a T5 adapter on its own: put it in a folder as text_encoder_3/ (SD3) or "
            "text_encoder_2/ (FLUX) and export that folder"
        )
    return "text_encoder"


def read_adapters(path: str | Path) -> AdapterSet:
    """Every adapter at `path`: a LoRA file, a PEFT folder, an adapter folder or a run (its `lora/`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TexforceError(f"adapter not found: {path}")
    if path.is_file():
        return read_lora_file(path)
    for folder in (path, path / "lora"):
        if (folder / PEFT_CONFIG).is_file():
            modules, base = read_peft(folder, "text_encoder")  # a U-Net's paths read alike
            return AdapterSet({_bare_component(modules, folder): modules}, base)
        found = [c for c in COMPONENTS if (folder / c / PEFT_CONFIG).is_file()]
        diffusers = folder / DIFFUSERS_WEIGHTS
        if found or diffusers.is_file():  # PEFT folders first; the diffusers file for the rest (a T5 is PEFT only)
            adapters = read_lora_file(diffusers) if diffusers.is_file() else AdapterSet({})
            for component in found:
                adapters.components[component], base = read_peft(folder / component, component)
                adapters.base = adapters.base or base
            adapters.pipeline = _header_pipeline(folder)
            return adapters
    kohya = sorted(path.glob("*.safetensors"))
    if len(kohya) == 1:
        return read_lora_file(kohya[0])
    raise TexforceError(
        f"no LoRA adapter at {path}: expected {PEFT_CONFIG} (PEFT), {DIFFUSERS_WEIGHTS} (diffusers), component "
        "folders (text_encoder/, …) or one kohya .safetensors in it"
    )


def write_adapters(adapters: AdapterSet, fmt: str, output: Path) -> Path:
    """Write `adapters` as `fmt` to `output` (a `.safetensors` file for kohya, a folder otherwise); the path."""
    if fmt not in FORMATS:
        raise TexforceError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "kohya":
        if output.suffix != ".safetensors":
            raise TexforceError(f"a kohya adapter is one file: give -o a .safetensors path, not {output}")
        write_kohya(adapters, output)
        return output
    if output.suffix == ".safetensors":
        raise TexforceError(f"{fmt} adapters are a folder: give -o a folder path, not {output}")
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t5 = {c for c, modules in adapters.components.items() if any(is_t5_path(path) for path in modules)}
    for component in adapters.components:
        if fmt == "peft" or component in t5:
            write_peft(adapters, component, tmp / component)
    if fmt == "diffusers" and set(adapters.components) - t5:
        write_diffusers(adapters, tmp / DIFFUSERS_WEIGHTS)
    shutil.rmtree(output, ignore_errors=True)
    tmp.rename(output)
    return output


def convert_adapter(source: str | Path, fmt: str, output: str | Path) -> Path:
    """`texforce export SOURCE --format FMT -o OUTPUT`."""
    return write_adapters(read_adapters(source), fmt, Path(output).expanduser())
