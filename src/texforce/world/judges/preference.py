"""`world_preference`: the world's ImageReward — a small image+text network trained on exactly judged images.

1. **Judgments** (judgments.py): world images sampled for training-split prompts (plain or with quality tags, from the
   world model and perturbed adapters of it) and rendered scenes at every quality, each labelled by the exact
   `world_score` (alignment × quality) of its plain prompt.
2. **Model** (preference_model.py): CNN patch tokens + the frozen world CLIP's text token states → a small
   transformer → the score in [0, 1], differentiable in the image, so it can drive direct reward backprop.
3. **Training** (`train_preference`): mean squared error plus a within-prompt pairwise ranking loss, and, for the
   image side only, an auxiliary loss: predict what the exact judges see (`detector_targets`).
4. **Validation** (`validate_preference`): on held-out prompts it never saw (held-out split and held-out
   colour–shape pairings), sampled the same way: Spearman correlation with `world_score` and the share of
   same-prompt pairs it orders as `world_score` does.

    texforce world preference --out src/texforce/world/assets/preference
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from texforce.errors import TexforceError
from texforce.world.detect import detect_objects, image_pixels, tensor_images
from texforce.world.judges.judgments import Judgments, JudgmentSampling, render_judgments, sample_all_judgments
from texforce.world.judges.preference_model import (
    OBJECT_TARGETS,
    PreferenceModel,
    PreferenceModelConfig,
    TextStates,
    save_preference_model,
)
from texforce.world.judges.quality import RAMPS, quality_checks
from texforce.world.scenes import COLORS, IMAGE_SIZE, SHAPES

Log = Callable[[str], None]


@dataclass
class PreferenceConfig:
    """Every number of one `world_preference` build; the defaults built the shipped model."""

    seed: int = 0
    # judgments of generated images
    num_prompts: int = 1536
    samples_per_prompt: int = 8
    sampling: JudgmentSampling = field(default_factory=JudgmentSampling)
    # rendered scenes, true or near-miss captions
    num_rendered_groups: int = 6144  # cheap: no sampling, so many more claims than the sampled judgments
    rendered_per_group: int = 8
    # validation on held-out prompts
    num_val_prompts: int = 192
    val_samples_per_prompt: int = 8
    # the network
    width: int = 96
    num_layers: int = 2
    num_heads: int = 4
    # training
    steps: int = 6000
    prompts_per_batch: int = 8  # groups of one prompt's images: the ranking loss compares within a group
    learning_rate: float = 1e-3
    ranking_weight: float = 0.5
    objects_weight: float = 1.0  # auxiliary loss: predict what the exact judge's detector sees
    num_threads: int = 2

    def validate(self) -> None:
        for name in ("num_prompts", "samples_per_prompt", "num_val_prompts", "steps", "prompts_per_batch"):
            if getattr(self, name) < 1:
                raise TexforceError(f"{name} must be at least 1")
        if self.samples_per_prompt < 2 or self.rendered_per_group < 2:
            raise TexforceError("samples_per_prompt and rendered_per_group must be at least 2 (ranking pairs)")


def tiny_preference_config(seed: int = 0) -> PreferenceConfig:
    """A seconds-long smoke build of every stage, on one thread."""
    return PreferenceConfig(
        seed=seed,
        num_prompts=4,
        samples_per_prompt=2,
        sampling=JudgmentSampling(num_steps=2),
        num_rendered_groups=4,
        rendered_per_group=2,
        num_val_prompts=4,
        val_samples_per_prompt=2,
        width=32,
        num_layers=1,
        steps=2,
        prompts_per_batch=2,
        num_threads=1,  # tiny tensors gain nothing from a second thread, and a test worker has one core
    )


def detector_targets(images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Auxiliary targets (N, DETECTOR_TARGETS): what the exact judges see in each image — per palette colour, the
    number of its objects of each shape (circle, square, triangle, none) and their mean centre (x, y in [0, 1]; -1
    when the colour is absent); then the four quality checks. Learning to see them first makes the score's data go
    much further."""
    colors, shapes = list(COLORS), [*SHAPES, None]
    targets = np.zeros((len(images), len(colors), len(shapes) + 2), dtype=np.float32)
    checks = np.zeros((len(images), len(RAMPS)), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = tensor_images(images[start : start + batch_size])
        checks[start : start + len(batch)] = np.stack(list(quality_checks(image_pixels(batch)).values()), axis=1)
        for i, objects in enumerate(detect_objects(batch), start):
            for c, color in enumerate(colors):
                mine = [o for o in objects if o.color == color]
                for o in mine:
                    targets[i, c, shapes.index(o.shape)] += 1
                centre = (np.mean([o.cx for o in mine]), np.mean([o.cy for o in mine])) if mine else (-IMAGE_SIZE,) * 2
                targets[i, c, -2:] = np.array(centre) / IMAGE_SIZE
    return torch.from_numpy(np.concatenate([targets.reshape(len(images), -1), checks], axis=1))


def detector_loss(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error of the per-colour shape counts, of the centres of the colours actually present and of the
    quality checks."""
    quality = F.mse_loss(predicted[:, OBJECT_TARGETS:], targets[:, OBJECT_TARGETS:])
    predicted = predicted[:, :OBJECT_TARGETS].reshape(len(predicted), len(COLORS), -1)
    targets = targets[:, :OBJECT_TARGETS].reshape(len(targets), len(COLORS), -1)
    counts = F.mse_loss(predicted[..., :-2], targets[..., :-2]) + quality
    present = targets[..., :-2].sum(-1) > 0
    if not present.any():
        return counts
    return counts + ((predicted[..., -2:] - targets[..., -2:]) ** 2).sum(-1)[present].mean()


def ranking_loss(predictions: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Logistic loss over same-group pairs whose targets differ: the better image should score higher."""
    same = groups[:, None] == groups[None, :]
    better = (targets[:, None] - targets[None, :]) > 1e-6
    pairs = same & better
    if not pairs.any():
        return predictions.sum() * 0
    margin = (predictions[:, None] - predictions[None, :])[pairs]
    return F.softplus(-margin * 10).mean()


def train_preference(
    cfg: PreferenceConfig, data: Judgments, text: TextStates, log: Log, validation: Judgments | None = None
) -> PreferenceModel:
    """Mean squared error + `ranking_weight` × within-group ranking loss + `objects_weight` × the auxiliary detector
    loss; batches of whole groups, half generated and half rendered."""
    started_all = time.perf_counter()
    torch.manual_seed(cfg.seed)
    text_config = text.encoder.config
    sizes = PreferenceModelConfig(
        cfg.width, cfg.num_layers, cfg.num_heads, text_config.hidden_size, text_config.max_position_embeddings
    )
    model = PreferenceModel(sizes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    warmup = max(1, cfg.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
    )
    by_source = [
        [np.flatnonzero(data.group == g) for g in np.unique(data.group[data.source == source])]
        for source in np.unique(data.source)
    ]  # groups of generated images, groups of rendered ones: every batch takes half of its groups from each
    states, masks = text(data.prompts)  # (N, L, H), (N, L): every prompt once
    objects = detector_targets(data.images)  # (N, DETECTOR_TARGETS)
    log(f"detected the objects and quality of {len(objects)} images ({time.perf_counter() - started_all:.0f}s)")
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    for step in range(cfg.steps):
        shares = np.array_split(np.arange(cfg.prompts_per_batch), len(by_source))
        picks = [g[i] for g, share in zip(by_source, shares, strict=True) for i in rng.choice(len(g), len(share))]
        rows = np.concatenate(picks)
        targets = torch.from_numpy(data.scores[rows]).float()
        predictions, seen = model(tensor_images(data.images[rows]), states[rows], masks[rows], with_objects=True)
        mse = F.mse_loss(predictions, targets)
        rank = ranking_loss(predictions, targets, torch.from_numpy(data.group[rows]))
        loss = mse + cfg.ranking_weight * rank + cfg.objects_weight * detector_loss(seen, objects[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step == 0 or (step + 1) % max(1, cfg.steps // 20) == 0 or step + 1 == cfg.steps:
            message = f"step {step + 1}/{cfg.steps} mse {mse.item():.4f} rank {rank.item():.3f}"
            if validation is not None and ((step + 1) % max(1, cfg.steps // 5) == 0 or step + 1 == cfg.steps):
                figures = validate_preference(model, validation, text)
                held_out = f"spearman {figures['spearman']:.3f} pairwise {figures['pairwise_accuracy']:.3f}"
                message += f" | held-out {held_out}"
                model.train()
            log(f"{message} ({time.perf_counter() - started:.0f}s)")
    return model.eval().requires_grad_(False)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), for Spearman's correlation."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's on average ranks)."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


def pairwise_accuracy(predicted: np.ndarray, exact: np.ndarray, group: np.ndarray) -> tuple[float, int]:
    """Share of same-group pairs with different exact scores that `predicted` orders the same way (ties: half)."""
    correct, total = 0.0, 0
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        e, p = exact[rows], predicted[rows]
        better = e[:, None] - e[None, :] > 1e-6
        diff = p[:, None] - p[None, :]
        correct += float((diff[better] > 0).sum() + 0.5 * (diff[better] == 0).sum())
        total += int(better.sum())
    return correct / max(total, 1), total


@torch.no_grad()
def predict(model: PreferenceModel, data: Judgments, text: TextStates, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(data.prompts), batch_size):
        states, masks = text(data.prompts[start : start + batch_size])
        out.append(model(tensor_images(data.images[start : start + batch_size]), states, masks).numpy())
    return np.concatenate(out)


def validate_preference(model: PreferenceModel, data: Judgments, text: TextStates) -> dict[str, float]:
    """Spearman with the exact reward and within-prompt pairwise accuracy, on `data` (held-out prompts)."""
    predicted = predict(model, data, text)
    accuracy, pairs = pairwise_accuracy(predicted, data.scores, data.group)
    return {
        "spearman": spearman(predicted, data.scores),
        "pairwise_accuracy": accuracy,
        "num_pairs": pairs,
        "num_images": len(data.prompts),
        "num_prompts": len(np.unique(data.group)),
        "exact_mean": float(data.scores.mean()),
        "predicted_mean": float(predicted.mean()),
    }


def build_preference(
    cfg: PreferenceConfig, out_dir: Path, model_dir: Path | None = None, cache: Path | None = None, log: Log = print
) -> dict:
    """Judge, train, validate and save `world_preference` into `out_dir`. `cache` keeps the sampled judgments (npz,
    the expensive part) for another build; the rendered ones are redrawn, deterministically, every time."""
    cfg.validate()
    torch.set_num_threads(cfg.num_threads)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    train_path, val_path = (cache / "train.npz", cache / "validation.npz") if cache else (None, None)
    if train_path is not None and train_path.is_file() and val_path.is_file():
        generated, validation = Judgments.load(train_path), Judgments.load(val_path)
        log(f"sampled judgments loaded from {cache}")
    else:
        counts = (cfg.num_prompts, cfg.samples_per_prompt, cfg.num_val_prompts, cfg.val_samples_per_prompt)
        generated, validation = sample_all_judgments(model_dir, cfg.sampling, counts, cfg.seed, log)
        if cache is not None:
            generated.save(train_path)
            validation.save(val_path)
    rendered = render_judgments(cfg.num_rendered_groups, cfg.rendered_per_group, cfg.seed + 1)
    data = Judgments.concat([generated, rendered])
    timings["judgments_s"] = time.perf_counter() - started
    log(f"{len(data.prompts)} training judgments (mean exact {data.scores.mean():.3f}), "
        f"{len(validation.prompts)} held-out")  # fmt: skip
    started = time.perf_counter()
    text = TextStates(model_dir)
    model = train_preference(cfg, data, text, log, validation)
    timings["train_s"] = time.perf_counter() - started
    figures = validate_preference(model, validation, text)
    record = {
        "build": asdict(cfg),
        "validation": figures,
        "num_train_judgments": len(data.prompts),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    save_preference_model(model, out_dir, record)
    log(f"held-out: spearman {figures['spearman']:.3f}, pairwise accuracy {figures['pairwise_accuracy']:.3f} "
        f"({figures['num_pairs']} pairs); saved {out_dir}")  # fmt: skip
    return record


__all__ = ["PreferenceConfig", "build_preference", "tiny_preference_config"]
