"""Model families and the sampler settings their makers publish: which family a base model is (read from its
folder's `model_index.json`, scheduler and denoiser configs, so that a local copy or a renamed fine-tune is known by
what it is), and the steps, guidance, T5 length and render batch of each family, from one table.

What tells the families apart in the folder:
    model_index.json `_class_name`      StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline,
                                        FluxPipeline
    scheduler `timestep_spacing`        `trailing`: SD-Turbo / SDXL-Turbo (their published scheduler configs)
    transformer `guidance_embeds`       FLUX.1-dev (embedded guidance) against FLUX.1-schnell
    transformer `dual_attention_layers` SD3.5 Medium (MMDiT-X); `qk_norm` without them: SD3.5 Large; neither: SD3
SD3.5 Large Turbo ships every config file of SD3.5 Large unchanged, so only its name ("turbo") tells it apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    """A family's published sampler settings. `batch_size`: images per pipeline call that fit a 24 GB GPU at the
    family's resolution in bf16 beside its weights (an estimate from weight and activation sizes, not a measurement;
    FLUX.1 and SD3.5 Large need offloading on 24 GB at all, so 1)."""

    name: str
    num_steps: int
    guidance_scale: float
    max_sequence_length: int | None  # T5 tokens (SD3, FLUX); None: no T5
    resolution: int
    batch_size: int
    source: str  # the model card whose example call sets these (SD 1.x/2.x, SDXL: the pipeline's defaults)


FAMILIES = {
    family.name: family
    for family in (
        Family("SD 1.x/2.x", 50, 7.5, None, 512, 4, "CompVis/stable-diffusion-v1-4, stabilityai/stable-diffusion-2-1"),
        Family("SD-Turbo", 1, 0.0, None, 512, 8, "stabilityai/sd-turbo"),
        Family("SDXL", 50, 5.0, None, 1024, 2, "stabilityai/stable-diffusion-xl-base-1.0"),
        Family("SDXL-Turbo", 1, 0.0, None, 512, 8, "stabilityai/sdxl-turbo"),
        Family("SD3 Medium", 28, 7.0, 256, 1024, 2, "stabilityai/stable-diffusion-3-medium-diffusers"),
        Family("SD3.5 Medium", 40, 4.5, 256, 1024, 2, "stabilityai/stable-diffusion-3.5-medium"),
        Family("SD3.5 Large", 28, 3.5, 256, 1024, 1, "stabilityai/stable-diffusion-3.5-large"),
        Family("SD3.5 Large Turbo", 4, 0.0, 256, 1024, 1, "stabilityai/stable-diffusion-3.5-large-turbo"),
        Family("FLUX.1-dev", 50, 3.5, 512, 1024, 1, "black-forest-labs/FLUX.1-dev"),  # guidance: embedded
        Family("FLUX.1-schnell", 4, 0.0, 256, 1024, 1, "black-forest-labs/FLUX.1-schnell"),
    )
}

# The built-ins by the architecture they copy (texforce/world and world-flow have configs of their own)
BUILT_IN_FAMILIES = {
    "texforce/tiny-random": "SD 1.x/2.x",
    "texforce/sd15-random": "SD 1.x/2.x",
    "texforce/sd21-random": "SD 1.x/2.x",
    "texforce/tiny-sdxl-random": "SDXL",
    "texforce/sdxl-random": "SDXL",
    "texforce/tiny-sd3-random": "SD3.5 Medium",  # a dual-attention (MMDiT-X) block, as SD3.5 Medium
    "texforce/sd3-medium-random": "SD3 Medium",
    "texforce/sd35-medium-random": "SD3.5 Medium",
    "texforce/sd35-large-random": "SD3.5 Large",
    "texforce/tiny-flux-random": "FLUX.1-dev",  # embeds the guidance scale
    "texforce/flux-dev-random": "FLUX.1-dev",
    "texforce/flux-schnell-random": "FLUX.1-schnell",
}

# A hub id that is not in the local cache is known by its name alone: the first pattern it contains decides
NAME_PATTERNS = (
    ("schnell", "FLUX.1-schnell"),
    ("flux", "FLUX.1-dev"),
    ("3.5-large-turbo", "SD3.5 Large Turbo"),
    ("3.5-large", "SD3.5 Large"),
    ("3.5-medium", "SD3.5 Medium"),
    ("diffusion-3", "SD3 Medium"),
    ("sdxl-turbo", "SDXL-Turbo"),
    ("xl", "SDXL"),
    ("sd-turbo", "SD-Turbo"),
)


# The U-Net pipelines' families: (distilled with trailing timesteps?) False, True
UNET_FAMILIES = {
    "StableDiffusionPipeline": ("SD 1.x/2.x", "SD-Turbo"),
    "StableDiffusionXLPipeline": ("SDXL", "SDXL-Turbo"),
}


@dataclass(frozen=True)
class Detection:
    family: Family
    evidence: str  # how it was told, in words


def detect_family(base: str) -> Detection:
    """The family of `base` (a built-in, a local folder or a hub id): from its folder's configs (a hub id's from the
    local cache), else from its name, else SD 1.x/2.x (the library's defaults)."""
    if base in BUILT_IN_FAMILIES:
        return Detection(FAMILIES[BUILT_IN_FAMILIES[base]], "the built-in's architecture")
    configs = _folder_configs(base)
    if configs is not None:
        name, evidence = classify(*configs, base)
        if name is not None:
            return Detection(FAMILIES[name], evidence)
    lowered = base.lower()
    for pattern, name in NAME_PATTERNS:
        if pattern in lowered:
            return Detection(FAMILIES[name], f"the name {base!r}")
    return Detection(FAMILIES["SD 1.x/2.x"], "nothing identifies it; Stable Diffusion assumed")


def classify(index: dict, scheduler: dict, denoiser: dict, base: str = "") -> tuple[str | None, str]:
    """The family name that a pipeline's `model_index.json`, scheduler config and U-Net/transformer config show
    (None for a class texforce does not load), with the evidence in words."""
    cls = index.get("_class_name")
    spacing = scheduler.get("timestep_spacing", "leading")
    if cls in UNET_FAMILIES:
        family = UNET_FAMILIES[cls][spacing == "trailing"]
        return family, f"model_index.json {cls}, scheduler timestep_spacing {spacing!r}"
    if cls == "FluxPipeline":
        embeds = bool(denoiser.get("guidance_embeds"))
        return ("FLUX.1-dev" if embeds else "FLUX.1-schnell"), f"{cls}, transformer guidance_embeds {embeds}"
    if cls == "StableDiffusion3Pipeline":
        if denoiser.get("dual_attention_layers"):
            return "SD3.5 Medium", f"{cls}, transformer dual_attention_layers (MMDiT-X)"
        if denoiser.get("qk_norm"):
            turbo = "turbo" in base.lower()
            evidence = f"{cls}, transformer qk_norm without dual attention{', the name says turbo' if turbo else ''}"
            return ("SD3.5 Large Turbo" if turbo else "SD3.5 Large"), evidence
        return "SD3 Medium", f"{cls}, transformer without qk_norm"
    return None, f"model_index.json {cls}"


def _folder_configs(base: str) -> tuple[dict, dict, dict] | None:
    """`model_index.json`, the scheduler config and the denoiser config of a local folder, or of a hub id in the
    local Hugging Face cache; None when there is no model_index.json to read."""
    folder = Path(base).expanduser()
    if folder.is_dir():

        def read(name: str) -> dict:
            path = folder / name
            return json.loads(path.read_text()) if path.is_file() else {}

    else:
        from huggingface_hub import try_to_load_from_cache

        def read(name: str) -> dict:
            try:
                path = try_to_load_from_cache(base, name)
            except ValueError:  # not a valid repo id
                return {}
            return json.loads(Path(path).read_text()) if isinstance(path, str) else {}

    index = read("model_index.json")
    if not index:
        return None
    denoiser = read("transformer/config.json") or read("unet/config.json")
    return index, read("scheduler/scheduler_config.json"), denoiser
