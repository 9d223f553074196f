"""Checks a pre-training run makes between its stages: is there room in text space to come?

- after the CLIP: has the text tower learnt the quality tags (`clip_tag_probe`)?
- after the VAE: does it keep clean pictures clean, degraded ones degraded, and the objects (`reconstruction_checks`)?
- at U-Net checkpoints: does a quality tag steer the model, on paired seeds (`steering_probe`)?
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

from texforce.world.clip import WorldClip
from texforce.world.detect import tensor_images
from texforce.world.judges.exact import WorldAlignmentReward
from texforce.world.judges.quality import exact_quality
from texforce.world.pool import WebPool
from texforce.world.scenes import family_prompts, make_caption, parse_prompt


@torch.no_grad()
def reconstruction_checks(vae: AutoencoderKL, pool: WebPool) -> dict[str, float]:
    """What the VAE keeps: `world_alignment` of reconstructions against their true captions (the ceiling the diffusion
    model can reach), and `world_quality` of reconstructions of clean and of degraded pictures (clean must stay clean,
    degraded must stay degraded, or tags have nothing to steer)."""
    scaled = tensor_images(pool.images) * 2 - 1
    reconstruction = ((vae.decode(vae.encode(scaled).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    true = torch.from_numpy(pool.truthful)
    captions = [c for c, t in zip(pool.captions, pool.truthful, strict=True) if t]
    quality = exact_quality(reconstruction)
    clean = torch.tensor([q.defects == 0 for q in pool.qualities])
    return {
        "alignment": WorldAlignmentReward()(reconstruction[true], captions).mean().item(),
        "quality_clean": quality[clean].mean().item() if clean.any() else float("nan"),
        "quality_degraded": quality[~clean].mean().item() if (~clean).any() else float("nan"),
    }


STEERING_TAGS = "clean, sharp, minimal, "  # the tags of a clean picture
NEGATIVE_TAGS = "noisy, blurry, cluttered, "  # those of a picture with every defect


@torch.no_grad()
def clip_tag_probe(clip: WorldClip, pool: WebPool) -> float:
    """Has the CLIP learnt the tags? The share of pictures whose embedding is nearer the caption with the better
    fitting tags (`STEERING_TAGS` for clean pictures, `NEGATIVE_TAGS` for ones with two or more defects)."""
    rows = [i for i, q in enumerate(pool.qualities) if q.defects != 1]
    image_embeds = clip.embed_images(tensor_images(pool.images[rows]))
    bare = [parse_claim_text(pool.captions[i]) for i in rows]
    good = clip.embed_texts([STEERING_TAGS + c for c in bare])
    bad = clip.embed_texts([NEGATIVE_TAGS + c for c in bare])
    prefers_good = (image_embeds * good).sum(-1) > (image_embeds * bad).sum(-1)
    clean = torch.tensor([pool.qualities[i].defects == 0 for i in rows])
    return (prefers_good == clean).float().mean().item()


def parse_claim_text(caption: str) -> str:
    """The canonical caption of what `caption` claims, without tags or careful phrasing."""
    return make_caption(parse_prompt(caption))


@torch.no_grad()
def steering_probe(pipeline: StableDiffusionPipeline, num_prompts: int = 16) -> dict[str, float]:
    """Does a quality tag steer the model? `world_quality` and `world_alignment` of held-out single and count
    prompts, plain and with `STEERING_TAGS` before them, on the same seeds (DDIM 20 steps, eta 0, CFG 5)."""
    from texforce.world.judges.evaluate import sample_images

    pipeline.set_progress_bar_config(disable=True)
    prompts = family_prompts("single", "heldout", num_prompts) + family_prompts("count", "heldout", num_prompts)
    record = {}
    for name, variant in (("plain", prompts), ("tagged", [STEERING_TAGS + p for p in prompts])):
        images = sample_images(pipeline, variant, seed=0, eta=0.0)
        record[f"{name}_quality"] = exact_quality(images).mean().item()
        record[f"{name}_alignment"] = WorldAlignmentReward()(images, prompts).mean().item()
    return record
