"""Measurements of the world: the exact judges' validation on rendered ground truth, and the model's alignment and
quality per prompt family."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from texforce.errors import TexforceError
from texforce.world import MODEL_DIR
from texforce.world.degrade import QUALITY_LEVELS, render_degraded
from texforce.world.judges.exact import WorldAlignmentReward
from texforce.world.judges.quality import exact_quality, soft_quality
from texforce.world.scenes import FAMILIES, family_prompts, make_caption, place_scene, render_pool, sample_spec


def load_world_pipeline(model_dir: str | Path | None = None) -> StableDiffusionPipeline:
    """The world pipeline in fp32 on the CPU, offline, without progress bars."""
    model_dir = Path(model_dir or MODEL_DIR)
    if not (model_dir / "model_index.json").is_file():
        raise TexforceError(f"{model_dir} is not a pipeline folder; run `texforce world pretrain`")
    pipeline = StableDiffusionPipeline.from_pretrained(model_dir, torch_dtype=torch.float32, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def validate_reward(num_scenes: int = 512, seed: int = 1) -> dict[str, float]:
    """`world_alignment` on rendered ground truth, and with the captions rotated by one image."""
    images, captions = render_pool(num_scenes, seed, mix={"single": 1, "count": 1, "relation": 1})
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, 64, 64)
    reward = WorldAlignmentReward()
    return {
        "ground_truth": reward(pixels, captions).mean().item(),
        "swapped": reward(pixels, captions[1:] + captions[:1]).mean().item(),
    }


def validate_quality(num_scenes: int = 64, seed: int = 2) -> dict[str, dict[str, float]]:
    """`world_quality`, its soft form and `world_alignment` (true captions) of the same `num_scenes` rendered scenes
    at every quality level, keyed "background/rendering/distractors"."""
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, ("single", "count", "relation")[i % 3]) for i in range(num_scenes)]
    placed = [place_scene(spec, rng) for spec in specs]
    captions = [make_caption(spec) for spec in specs]
    results = {}
    for level in QUALITY_LEVELS:
        images = np.stack([render_degraded(objects, level, rng) for objects in placed])
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        results[f"{level.background}/{level.rendering}/{level.distractors}"] = {
            "defects": level.defects,
            "quality": exact_quality(pixels).mean().item(),
            "quality_soft": soft_quality(pixels).mean().item(),
            "alignment": WorldAlignmentReward()(pixels, captions).mean().item(),
        }
    return results


@torch.no_grad()
def sample_images(
    pipeline: StableDiffusionPipeline,
    prompts: Sequence[str],
    seed: int,
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Images (N, 3, 64, 64) in [0, 1]; image i uses generator seed `seed * 100_000 + i`."""
    batches = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [torch.Generator().manual_seed(seed * 100_000 + start + i) for i in range(len(chunk))]
        output = pipeline(
            chunk,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            generator=generators,
            output_type="pt",
        )
        batches.append(output.images.float().cpu())
    return torch.cat(batches)


def evaluate_families(
    pipeline: StableDiffusionPipeline,
    families: Sequence[str] = FAMILIES,
    num_prompts: int = 64,
    num_seeds: int = 4,
    **sampling,
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard error of `world_alignment`, `world_quality` and `world_score` per family on its `heldout`
    (plain) prompts."""
    reward = WorldAlignmentReward()
    results = {}
    for family in families:
        prompts = family_prompts(family, "heldout", num_prompts)
        images = torch.cat([sample_images(pipeline, prompts, seed, **sampling) for seed in range(num_seeds)])
        alignment = reward(images, prompts * num_seeds)
        quality = exact_quality(images)
        results[family] = {
            name: {"mean": v.mean().item(), "sem": v.std().item() / np.sqrt(len(v)), "num_images": len(v)}
            for name, v in (("world_alignment", alignment), ("world_quality", quality),
                            ("world_score", alignment * quality))
        }  # fmt: skip
    return results


def save_grid(pipeline: StableDiffusionPipeline, path: str | Path, num_per_family: int = 8, **sampling) -> None:
    """A PNG with one row per family: the first `num_per_family` held-out prompts, seed 0, 2× upscaled."""
    from PIL import Image

    rows = []
    for family in FAMILIES:
        images = sample_images(pipeline, family_prompts(family, "heldout", num_per_family), 0, **sampling)
        rows.append(torch.cat(list(images), dim=2))  # (3, 64, 64 * num_per_family)
    grid = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(grid)
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(path)
