"""A base model's architecture on the meta device: every shape and dtype, no memory and no weights (`texforce plan`
sizes a run from it).

The random built-ins are built as they are; the offline world's models are loaded (they are small) and moved to
meta; a hub id or a local folder gets the architecture of its family (`families.detect_family`: from the folder's
configs when there is one, else from the name) from the true-architecture builders of `sd.py` and `flow.py`. A
fine-tune whose shapes differ from its family's is therefore sized as its family.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import torch
from diffusers import DiffusionPipeline

from texforce.bases.families import detect_family
from texforce.bases.flow import FLOW_BUILT_IN, build_flux_pipeline, build_sd3_pipeline
from texforce.bases.loading import WORLD, WORLD_FLOW, load_pipeline, with_sampling_scheduler
from texforce.bases.sd import BUILT_IN, build_sd_pipeline, build_sdxl_pipeline
from texforce.errors import TexforceError

META = torch.device("meta")
FAMILY_ARCHITECTURES: dict[str, Callable[..., DiffusionPipeline]] = {
    "SD 1.x/2.x": partial(build_sd_pipeline, "sd15"),  # SD 2.x by name: SD2_NAMES
    "SD-Turbo": partial(build_sd_pipeline, "sd21"),  # a distilled SD 2.1
    "SDXL": build_sdxl_pipeline,
    "SDXL-Turbo": build_sdxl_pipeline,
    "SD3 Medium": partial(build_sd3_pipeline, "sd3-medium"),
    "SD3.5 Medium": partial(build_sd3_pipeline, "sd35-medium"),
    "SD3.5 Large": partial(build_sd3_pipeline, "sd35-large"),
    "SD3.5 Large Turbo": partial(build_sd3_pipeline, "sd35-large"),
    "FLUX.1-dev": partial(build_flux_pipeline, "flux-dev"),
    "FLUX.1-schnell": partial(build_flux_pipeline, "flux-schnell"),
}
SD2_NAMES = ("stable-diffusion-2", "sd21", "sd2-")


def _on_device(builder: Callable[..., DiffusionPipeline], device: torch.device) -> DiffusionPipeline:
    """Run a builder with its modules created on `device` (its own `device` argument if it has one)."""
    target = builder.func if isinstance(builder, partial) else builder
    if "device" in inspect.signature(target).parameters:
        return builder(device=device)
    with device:
        return builder()


def _on_meta(builder: Callable[..., DiffusionPipeline]) -> DiffusionPipeline:
    return _on_device(builder, META)


def build_on_device(base: str, device: torch.device | str, dtype: torch.dtype) -> DiffusionPipeline:
    """A random built-in (`BUILT_IN`, `FLOW_BUILT_IN`) made directly on `device` in `dtype`: FLUX.1's 16.9 B
    parameters are 34 GB in bf16 on a GPU in seconds, where the CPU would stage 68 GB in fp32 for minutes.

    It is built on the meta device first, and refused with a one-line error when its weights alone exceed the
    device's free memory; then its constructors run again on the device (not `to_empty`, which would leave the
    buffers the constructors compute, such as position ids and sin-cos tables, uninitialised)."""
    builder = BUILT_IN.get(base) or FLOW_BUILT_IN.get(base)
    if builder is None:
        raise TexforceError(f"{base} is not a random built-in: {', '.join([*BUILT_IN, *FLOW_BUILT_IN])}")
    device = torch.device(device)
    planned = _on_meta(builder)
    modules = [m for m in planned.components.values() if isinstance(m, torch.nn.Module)]
    size = sum(p.numel() for module in modules for p in module.parameters())
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if size * dtype.itemsize > free:
            raise TexforceError(f"{base}: {size * dtype.itemsize / 2**30:.1f} GiB of weights in {dtype}, "
                                f"{free / 2**30:.1f} GiB free on {device}")  # fmt: skip
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        pipe = _on_device(builder, device)
    finally:
        torch.set_default_dtype(previous)
    return with_sampling_scheduler(pipe.to(dtype=dtype))  # buffers computed in fp32 (SD3's sin-cos table) too


def build_meta_pipeline(base: str) -> tuple[DiffusionPipeline, str]:
    """The pipeline of `base` on the meta device, with the scheduler texforce samples by, and where its architecture
    came from, in words."""
    if base in BUILT_IN or base in FLOW_BUILT_IN:
        pipe = _on_meta(BUILT_IN.get(base) or FLOW_BUILT_IN[base])
        return with_sampling_scheduler(pipe), "the built-in's own architecture"
    if base in (WORLD, WORLD_FLOW):
        return load_pipeline(base).to(META), "the shipped model, moved to the meta device"
    detection = detect_family(base)
    name = detection.family.name
    if name == "SD 1.x/2.x" and any(key in base.lower() for key in SD2_NAMES):
        builder, name = partial(build_sd_pipeline, "sd21"), "SD 2.x"
    else:
        builder = FAMILY_ARCHITECTURES[name]
    return with_sampling_scheduler(_on_meta(builder)), f"the published {name} architecture ({detection.evidence})"
