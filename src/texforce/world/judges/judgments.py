"""The data of `world_preference`: world images judged exactly by `world_score`, in groups of one prompt.

ImageReward was trained on human rankings of images that diffusion models generated for real prompts. Here:

- **sampled** (`sample_judgments`): the world model, and randomly perturbed LoRA adapters of its text encoder and
  U-Net (for diversity), samples each training-split prompt several times — from the plain prompt or from the prompt
  with positive or negative quality tags, so that the pictures span the world's qualities — and every image is judged
  against the *plain* prompt's claim;
- **rendered** (`render_judgments`): rendered scenes of training-split claims, the first of each group the captioned
  scene itself, clean, the others near misses (a colour, shape, count or relation changed, or an extra object) or the
  true scene, at a random quality.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from texforce.errors import TexforceError
from texforce.world.degrade import CLEAN, QUALITY_LEVELS
from texforce.world.detect import tensor_images
from texforce.world.scenes import (
    IMAGE_SIZE,
    RELATIONS,
    SEEN_PAIRS,
    PlacedObject,
    SceneSpec,
    caption_spec,
    family_prompts,
    make_caption,
    parse_prompt,
    place_scene,
    sample_spec,
    spec_split,
)

Log = Callable[[str], None]
JUDGED_FAMILIES = {"single": 0.2, "count": 0.35, "relation": 0.45}  # the share of prompts of each family


@dataclass(frozen=True)
class JudgmentSampling:
    """How sampled judgments vary: random LoRA perturbations (std of B; mostly the neighbourhood a fine-tuned adapter
    explores, some far off), CFG, eta, and how often the sampled prompt carries positive or negative tags."""

    text_perturbations: tuple[float, ...] = (0.0, 0.0, 0.02, 0.05, 0.1, 0.2)
    unet_perturbations: tuple[float, ...] = (0.0, 0.0, 0.0, 0.03, 0.06, 0.15)
    guidance_scales: tuple[float, ...] = (4.0, 5.0, 6.0)
    etas: tuple[float, ...] = (0.0, 1.0)
    num_steps: int = 20
    positive_tags_prob: float = 0.25
    negative_tags_prob: float = 0.25


@dataclass
class Judgments:
    """Judged images in groups of one prompt: images uint8 (N, 64, 64, 3), prompts (N), scores (N,),
    group (N,) int (same group = same prompt), source (N,) int (0 generated, 1 rendered)."""

    images: np.ndarray
    prompts: list[str]
    scores: np.ndarray
    group: np.ndarray
    source: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, images=self.images, prompts=np.array(self.prompts), scores=self.scores, group=self.group,
                 source=self.source)  # fmt: skip
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Judgments:
        data = np.load(path)
        return cls(data["images"], data["prompts"].tolist(), data["scores"], data["group"], data["source"])

    @classmethod
    def concat(cls, parts: Sequence[Judgments]) -> Judgments:
        offsets = np.cumsum([0] + [int(p.group.max()) + 1 if len(p.group) else 0 for p in parts[:-1]])
        return cls(
            np.concatenate([p.images for p in parts]),
            [q for p in parts for q in p.prompts],
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.group + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.source for p in parts]),
        )


def judge_images(images: np.ndarray, prompts: Sequence[str], chunk: int = 1024) -> np.ndarray:
    """`world_score` (N,) of uint8 images, in chunks (the detector's maps of every image at once do not fit)."""
    from texforce.world.judges.exact import WorldScoreReward

    judge = WorldScoreReward()
    return np.concatenate(
        [
            judge(tensor_images(images[i : i + chunk]), prompts[i : i + chunk]).numpy()
            for i in range(0, len(images), chunk)
        ]
    )


def judged_prompts(split: str, num: int, seed: int) -> list[str]:
    """`num` prompts of `split` drawn from the judged families (for `heldout`, held-out pairings too)."""
    families = dict(JUDGED_FAMILIES)
    if split == "heldout":
        families = {"single": 0.15, "count": 0.3, "relation": 0.35, "composition": 0.2}
    counts = {f: round(num * w) for f, w in families.items()}
    counts[next(iter(counts))] += num - sum(counts.values())
    return [p for f, n in counts.items() for p in family_prompts(f, split, n, seed=seed + 17)]


def _perturbed_pipeline(pipeline, text_std: float, unet_std: float, generator: torch.Generator) -> None:
    """Set the random LoRA adapters of the pipeline's text encoder and U-Net to fresh draws of the given std."""
    for module, std in ((pipeline.text_encoder, text_std), (pipeline.unet, unet_std)):
        with torch.no_grad():
            for name, param in module.named_parameters():
                if "lora_A" in name:
                    param.normal_(0, 1 / math.sqrt(param.shape[0]), generator=generator)
                elif "lora_B" in name:
                    param.normal_(0, 1, generator=generator).mul_(std)


def add_perturbation_adapters(pipeline) -> None:
    """Attach rank-16 LoRA adapters (zero until `_perturbed_pipeline` draws them) to text encoder and U-Net."""
    from peft import LoraConfig

    from texforce.config import TEXT_LORA_TARGETS, UNET_LORA_TARGETS

    for module, targets in ((pipeline.text_encoder, TEXT_LORA_TARGETS), (pipeline.unet, UNET_LORA_TARGETS)):
        module.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=list(targets), init_lora_weights=False))


def _tagged(prompt: str, rng: np.random.Generator, sampling: JudgmentSampling) -> str:
    """The prompt as sampled: plain, or with the tags of a clean picture or of a picture with defects before it."""
    draw = rng.random()
    if draw < sampling.positive_tags_prob:
        quality = CLEAN
    elif draw < sampling.positive_tags_prob + sampling.negative_tags_prob:
        quality = QUALITY_LEVELS[int(rng.integers(1, len(QUALITY_LEVELS)))]  # every level but the clean first one
    else:
        return prompt
    return ", ".join(quality.tags()) + ", " + prompt


@torch.no_grad()
def sample_judgments(
    pipeline, prompts: Sequence[str], samples_per_prompt: int, sampling: JudgmentSampling, seed: int, log: Log
) -> Judgments:
    """Sample every prompt `samples_per_prompt` times, each prompt under its own perturbation, guidance scale, eta
    and tags; judge each image by `world_score` against the plain prompt."""
    from texforce.world.judges.evaluate import sample_images

    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, 64 // samples_per_prompt)  # prompts per sampling call (one perturbation each call)
    images, names = [], []
    started = time.perf_counter()
    for start in range(0, len(prompts), chunk):
        plain = [p for p in prompts[start : start + chunk] for _ in range(samples_per_prompt)]
        sampled = [_tagged(p, rng, sampling) for p in prompts[start : start + chunk]]
        sampled = [p for p in sampled for _ in range(samples_per_prompt)]
        text_std, unet_std = rng.choice(sampling.text_perturbations), rng.choice(sampling.unet_perturbations)
        _perturbed_pipeline(pipeline, text_std, unet_std, generator)
        pictures = sample_images(
            pipeline,
            sampled,
            seed=seed * 1000 + start,
            num_inference_steps=sampling.num_steps,
            guidance_scale=float(rng.choice(sampling.guidance_scales)),
            eta=float(rng.choice(sampling.etas)),
        )
        images.append((pictures.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
        names += plain
        done = min(start + chunk, len(prompts))
        if done == len(prompts) or (start // chunk) % 10 == 0:
            log(f"sampled {done * samples_per_prompt}/{len(prompts) * samples_per_prompt} images "
                f"({time.perf_counter() - started:.0f}s)")  # fmt: skip
    images_ = np.concatenate(images)
    group = np.repeat(np.arange(len(prompts)), samples_per_prompt)
    return Judgments(images_, names, judge_images(images_, names), group, np.zeros(len(names), np.int64))


def near_miss(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """`spec` with one thing changed: a colour, a shape, a count, the relation, or the objects' order."""
    objects = list(spec.objects)
    i = int(rng.integers(len(objects)))
    o = objects[i]
    kind = rng.choice(["color", "shape", "count", "relation"])
    if kind == "count" and o.count > 1:
        objects[i] = replace(o, count=int(rng.choice([c for c in (1, 2, 3, 4) if c != o.count])))
    elif kind == "relation" and spec.relation is not None:
        return SceneSpec(spec.objects, str(rng.choice([r for r in RELATIONS if r != spec.relation])))
    elif kind == "shape":
        shapes = [s for c, s in SEEN_PAIRS if c == o.color and s != o.shape]
        objects[i] = replace(o, shape=str(rng.choice(shapes))) if shapes else o
    else:
        colors = [c for c, s in SEEN_PAIRS if s == o.shape and c != o.color]
        objects[i] = replace(o, color=str(rng.choice(colors)))
    if len(objects) == 2 and (objects[0].color, objects[0].shape) == (objects[1].color, objects[1].shape):
        return spec  # the change made both objects equal: keep the true scene
    return SceneSpec(tuple(objects), spec.relation)


def _extra_object(placed: list[PlacedObject], rng: np.random.Generator) -> list[PlacedObject]:
    color, shape = SEEN_PAIRS[int(rng.integers(len(SEEN_PAIRS)))]
    for _ in range(50):
        side = 12
        cx, cy = rng.uniform(8, IMAGE_SIZE - 8, size=2)
        if all(abs(cx - o.cx) > (side + o.side) / 2 + 2 or abs(cy - o.cy) > (side + o.side) / 2 + 2 for o in placed):
            return [*placed, PlacedObject(color, shape, side, float(cx), float(cy))]
    return placed


def render_judgments(num_groups: int, per_group: int, seed: int) -> Judgments:
    """Groups of rendered scenes sharing one caption (a training-split claim): the captioned scene itself, clean (first
    of the group), then near misses of it, the scene with an extra object, or the true scene, each at a quality drawn
    uniformly from `QUALITY_LEVELS`; each judged by `world_score`."""
    from texforce.world.degrade import render_degraded

    rng = np.random.default_rng(seed)
    names = list(JUDGED_FAMILIES)
    weights = np.array(list(JUDGED_FAMILIES.values()))
    images, prompts = [], []
    while len(prompts) < num_groups * per_group:
        spec = sample_spec(rng, names[rng.choice(len(names), p=weights / weights.sum())])
        claim = caption_spec(rng, spec, keep_size=0.5, keep_position=0.5)
        if spec_split(claim) != "train":  # held-out claims stay unseen, as in the sampled judgments
            continue
        caption = make_caption(claim, rng)
        for k in range(per_group):
            drawn = spec if k == 0 or rng.random() < 0.3 else near_miss(spec, rng)
            placed = place_scene(drawn, rng)
            if k > 0 and rng.random() < 0.2:
                placed = _extra_object(placed, rng)
            quality = CLEAN if k == 0 else QUALITY_LEVELS[int(rng.integers(len(QUALITY_LEVELS)))]
            images.append(render_degraded(placed, quality, rng))
            prompts.append(caption)
    images_ = np.stack(images)
    group = np.repeat(np.arange(num_groups), per_group)
    return Judgments(images_, prompts, judge_images(images_, prompts), group, np.ones(len(prompts), np.int64))


def sample_all_judgments(
    model_dir: Path | None,
    sampling: JudgmentSampling,
    counts: tuple[int, int, int, int],
    seed: int,
    log: Log,
) -> tuple[Judgments, Judgments]:
    """The sampled judgments of (training prompts, samples each, held-out prompts, samples each) = `counts`: of
    training-split prompts (to train on) and of held-out prompts (to validate on)."""
    from texforce.world.judges.evaluate import load_world_pipeline

    num_prompts, samples_per_prompt, num_val_prompts, val_samples_per_prompt = counts
    pipeline = load_world_pipeline(model_dir)
    add_perturbation_adapters(pipeline)
    train_prompts = judged_prompts("train", num_prompts, seed)
    val_prompts = judged_prompts("heldout", num_val_prompts, seed)
    overlap = {str(parse_prompt(p)) for p in train_prompts} & {str(parse_prompt(p)) for p in val_prompts}
    if overlap:
        raise TexforceError(f"{len(overlap)} validation claims are also training claims")
    log(f"judging {len(train_prompts)} training prompts × {samples_per_prompt} samples")
    generated = sample_judgments(pipeline, train_prompts, samples_per_prompt, sampling, seed, log)
    log(f"judging {len(val_prompts)} held-out prompts × {val_samples_per_prompt} samples")
    validation = sample_judgments(pipeline, val_prompts, val_samples_per_prompt, sampling, seed + 2, log)
    return generated, validation
