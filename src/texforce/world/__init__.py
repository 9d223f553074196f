"""The offline world: procedural scenes, an exact alignment reward and a tiny Stable Diffusion of our own.

`MODEL_DIR` is the shipped `StableDiffusionPipeline` folder; `CLIP_IMAGE_DIR` holds the image tower of its CLIP
for the learned `world_clipscore` reward, `PREFERENCE_DIR` the learned `world_preference` reward. Prompt sets for
training come from `train_prompts` and `heldout_prompts`; per-family evaluation sets from `family_prompts`.
"""

from pathlib import Path

from texforce.world.scenes import FAMILIES, family_prompts, heldout_prompts, parse_prompt, train_prompts

ASSETS_DIR = Path(__file__).parent / "assets"
MODEL_DIR = ASSETS_DIR / "model"
CLIP_IMAGE_DIR = ASSETS_DIR / "clip_image"
PREFERENCE_DIR = ASSETS_DIR / "preference"
WORLD_FLOW_DIR = ASSETS_DIR / "world_flow"  # texforce/world-flow: its transformer; the rest is the model's

__all__ = [
    "CLIP_IMAGE_DIR",
    "FAMILIES",
    "MODEL_DIR",
    "PREFERENCE_DIR",
    "WORLD_FLOW_DIR",
    "family_prompts",
    "heldout_prompts",
    "parse_prompt",
    "train_prompts",
]
