"""The flow-matching world model, `texforce/world-flow`: a small SD3-architecture transformer (MMDiT) trained by
rectified flow on the v2 pre-training pool, on the shipped world's CLIP text tower and VAE.

Only the transformer and its scheduler are stored (`assets/world_flow/`); the text tower, its projection and the VAE
are the world model's own files, shared, not copied. The pipeline is a stock `StableDiffusion3Pipeline` with the
world CLIP in both CLIP slots (two copies, so each gets its own LoRA) and no T5: the transformer's joint width is the
two CLIPs' (64 + 64), and it was trained on the CLIP tokens alone, so a stock call passes `max_sequence_length=0`
(texforce does this itself: `bases.loading.t5_free_length`).

    texforce world pretrain-flow --out src/texforce/world/assets/world_flow --seed 0
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

from texforce.bases.world import assemble, world_text_encoder
from texforce.errors import TexforceError
from texforce.files import write_text_atomic
from texforce.world.detect import tensor_images
from texforce.world.models.optim import step_with_ema, warmup_cosine
from texforce.world.pool import render_web_pool

Log = Callable[[str], None]
STATS_FILE = "pretrain_stats.json"
PROGRESS_FILE = "progress.pt"  # optimizer, EMA, step and RNG of an unfinished run; removed when it completes


@dataclass
class FlowPretrainConfig:
    """Every number of a world-flow pre-training run; the defaults built the shipped model."""

    seed: int = 0
    num_scenes: int = 24_000  # the v2 pool (same renderer, same seed)
    num_layers: int = 4
    num_attention_heads: int = 6  # width 96: 1.31 M parameters, ~0.5 s a step of 128 on 2 cores
    attention_head_dim: int = 16
    steps: int = 3000
    batch_size: int = 128
    learning_rate: float = 5e-4
    ema_decay: float = 0.995
    empty_caption_prob: float = 0.1
    logit_normal_std: float = 1.0  # SD3's timestep density: sigmoid of a normal
    save_every: int = 250
    num_threads: int = 2

    def validate(self) -> None:
        for name in ("num_scenes", "num_layers", "steps", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise TexforceError(f"{name} must be at least 1")
        if not 0 <= self.empty_caption_prob < 1:
            raise TexforceError("empty_caption_prob must be in [0, 1)")


def tiny_flow_config(seed: int = 0) -> FlowPretrainConfig:
    """A few steps on a few scenes, on one thread: a seconds-long smoke run."""
    return FlowPretrainConfig(
        seed=seed,
        num_scenes=32,
        num_layers=1,
        num_attention_heads=2,
        steps=4,
        batch_size=4,
        save_every=2,
        num_threads=1,
    )


def build_transformer(cfg: FlowPretrainConfig, joint_width: int, pooled_width: int) -> SD3Transformer2DModel:
    """An SD3.5-style MMDiT (QK RMS-norm) on the world VAE's 16×16×4 latents in 2×2 patches (64 image tokens)."""
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=cfg.num_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=joint_width,
        caption_projection_dim=cfg.num_attention_heads * cfg.attention_head_dim,
        pooled_projection_dim=pooled_width,
        pos_embed_max_size=8,
        qk_norm="rms_norm",
    )


@torch.no_grad()
def encode_pool(
    pipe: StableDiffusion3Pipeline, images, captions: list[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latent means and stds (N, 4, 16, 16), caption index (N,), and the pipeline's own `encode_prompt` of every
    distinct caption: states (U + 1, 32, 128) and pooled (U + 1, 128), row 0 the empty caption."""
    unique = ["", *sorted(set(captions))]
    row = {c: i for i, c in enumerate(unique)}
    states, pooled = [], []
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        embeds, _, pooled_embeds, _ = pipe.encode_prompt(
            chunk, None, None, do_classifier_free_guidance=False, max_sequence_length=0, device=torch.device("cpu")
        )
        states.append(embeds)
        pooled.append(pooled_embeds)
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = pipe.vae.encode(tensor_images(images[start : start + batch_size]) * 2 - 1).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    index = torch.tensor([row[c] for c in captions])
    return torch.cat(means), torch.cat(stds), index, torch.cat(states), torch.cat(pooled)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pretrain_flow(
    cfg: FlowPretrainConfig, out_dir: str | Path, log: Log = print, stop_after: int | None = None
) -> dict:
    """Train the transformer by rectified flow (x_t = (1 − t)·x_0 + t·ε, target ε − x_0, t logit-normal) on the
    pre-encoded v2 pool, CFG by empty captions; return the stats written beside it.

    Every `save_every` steps the EMA goes to `out_dir/transformer` (a usable model) and the whole state to
    `out_dir/progress.pt`; a second call with the same config resumes from it and ends with the same weights as an
    uninterrupted run. `stop_after` ends this call after that many steps in all (to split a run).
    """
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    pool = render_web_pool(cfg.num_scenes, cfg.seed)
    torch.manual_seed(cfg.seed)
    encoder = world_text_encoder()
    width = 2 * encoder.config.hidden_size
    transformer = build_transformer(cfg, joint_width=width, pooled_width=2 * encoder.config.projection_dim)
    pipe = assemble(transformer)
    means, stds, caption_index, states, pooled = encode_pool(pipe, pool.images, pool.captions)
    scaling = pipe.vae.config.scaling_factor
    log(f"rendered and encoded {len(caption_index)} scenes, {len(states) - 1} captions, in "
        f"{time.perf_counter() - start:.0f}s; transformer {sum(p.numel() for p in transformer.parameters()):,} "
        "parameters")  # fmt: skip
    transformer.train().requires_grad_(True)
    ema = build_transformer(cfg, width, pooled.shape[-1]).requires_grad_(False)
    ema.load_state_dict(transformer.state_dict())
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.steps, max(1, cfg.steps // 20)))
    generator = torch.Generator().manual_seed(cfg.seed + 3)
    stats: dict = {"config": asdict(cfg), "elapsed_s": 0.0, "losses": {}}
    step = 0
    progress = out_dir / PROGRESS_FILE
    if progress.is_file():
        state = torch.load(progress, weights_only=False)
        if state["config"] != asdict(cfg):
            raise TexforceError(f"{progress} is from another config; delete it or rerun with that config")
        transformer.load_state_dict(state["transformer"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        stats, step = state["stats"], state["step"]
        log(f"resumed at step {step}/{cfg.steps}")
    session_start = time.perf_counter() - stats["elapsed_s"]

    def save(done: int) -> None:
        ema.save_pretrained(out_dir / "transformer", safe_serialization=True)
        pipe.scheduler.save_pretrained(out_dir / "scheduler")
        stats.update(steps_done=done, elapsed_s=round(time.perf_counter() - session_start, 1))
        stats["parameters"] = sum(p.numel() for p in ema.parameters())
        write_text_atomic(out_dir / STATS_FILE, json.dumps(stats, indent=2) + "\n")
        if done < cfg.steps:
            _atomic_save(
                {
                    "config": asdict(cfg),
                    "transformer": transformer.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "generator": generator.get_state(),
                    "stats": stats,
                    "step": done,
                },
                progress,
            )
        else:
            progress.unlink(missing_ok=True)

    last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    while step < last:
        index = torch.randint(len(caption_index), (cfg.batch_size,), generator=generator)
        x0 = (means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)) * scaling
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.sigmoid(cfg.logit_normal_std * torch.randn(len(index), generator=generator))  # (B,)
        rows = caption_index[index]
        rows = torch.where(torch.rand(len(index), generator=generator) < cfg.empty_caption_prob, 0, rows)
        noisy = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        velocity = transformer(
            hidden_states=noisy, encoder_hidden_states=states[rows], pooled_projections=pooled[rows], timestep=t * 1000
        ).sample
        loss = F.mse_loss(velocity, noise - x0)
        step_with_ema(loss, transformer, ema, optimizer, schedule, step, cfg.ema_decay)
        step += 1
        if step == 1 or step % max(1, cfg.steps // 20) == 0:
            stats["losses"][str(step)] = round(loss.item(), 4)
            log(f"step {step}/{cfg.steps} loss {loss.item():.4f} ({time.perf_counter() - session_start:.0f}s)")
        if step % cfg.save_every == 0 or step == last:
            save(step)
    return stats
