"""Pre-training of the world model, the way Stable Diffusion was built, sized for a 2-core CPU.

Three stages on one pre-rendered, web-like pool of scenes (pool.py: pictures of varied quality, captions that state
it only sometimes and are sometimes wrong): (1) a small CLIP trained contrastively; (2) a small
`AutoencoderKL` (64×64×3 → 16×16×4); (3) a small `UNet2DConditionModel` trained on noise prediction,
conditioned on the frozen text tower, with `empty_caption_prob` empty captions for classifier-free
guidance. Because the text tower and the VAE are frozen in stage 3, caption embeddings and latent
distributions are encoded once, and each U-Net step only samples from them.

After the VAE and at U-Net checkpoints the run measures what matters for the world's room in text space: whether
the VAE keeps clean pictures clean, and whether a quality tag steers the U-Net (`steering_probe`, paired seeds).

    texforce world pretrain --out src/texforce/world/assets --seed 0
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from texforce.adapters.files import save_pipeline
from texforce.bases.sd import assemble_pipeline
from texforce.errors import TexforceError
from texforce.world.clip import WorldClip, build_image_encoder, build_text_encoder
from texforce.world.detect import segment_colors, tensor_images
from texforce.world.models.architectures import build_noise_scheduler, build_unet, build_vae
from texforce.world.models.optim import step_with_ema, warmup_cosine
from texforce.world.models.probes import clip_tag_probe, reconstruction_checks, steering_probe
from texforce.world.pool import WEB_MIX, WebPool, render_web_pool

Log = Callable[[str], None]
STATS_FILE = "pretrain_stats.json"


@dataclass
class PretrainConfig:
    """Every number of a pre-training run; the defaults built the shipped model."""

    seed: int = 0
    num_scenes: int = 24_000
    # stage 1: CLIP
    text_hidden_size: int = 64
    text_num_layers: int = 4
    max_length: int = 32
    image_hidden_size: int = 128
    image_num_layers: int = 3
    clip_steps: int = 300
    clip_batch_size: int = 256
    clip_learning_rate: float = 1e-3
    # stage 2: VAE
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_learning_rate: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_object_weight: float = 5.0  # loss weight of object pixels (and their 1-px rim) against background ones
    # stage 3: U-Net
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_steps: int = 4000
    unet_batch_size: int = 128
    unet_learning_rate: float = 1e-3
    unet_ema_decay: float = 0.995
    empty_caption_prob: float = 0.1
    unet_save_every: int = 250
    probe_every: int = 1000  # U-Net steps between tag-steering probes
    num_threads: int = 2

    def validate(self) -> None:
        for name in ("num_scenes", "clip_steps", "vae_steps", "unet_steps", "clip_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if len(self.vae_channels) != 3:
            raise ValueError("vae_channels needs 3 levels (64 → 16 latents)")
        if self.vae_object_weight < 1:
            raise ValueError("vae_object_weight must be at least 1")


def tiny_config(seed: int = 0) -> PretrainConfig:
    """Tiny sizes and a few steps, on one thread: a smoke run of every stage in seconds."""
    return PretrainConfig(
        seed=seed,
        num_scenes=64,
        text_num_layers=1,
        image_hidden_size=32,
        image_num_layers=1,
        clip_steps=2,
        clip_batch_size=8,
        vae_channels=(8, 8, 8),
        vae_steps=2,
        vae_batch_size=4,
        unet_channels=(16, 16, 16),
        unet_steps=2,
        unet_save_every=1,
        probe_every=2,
        unet_batch_size=4,
        num_threads=1,  # tiny tensors gain nothing from a second thread, and a test worker has one core
    )


def _every(step: int, num_steps: int) -> bool:
    return step == 0 or (step + 1) % max(1, num_steps // 10) == 0 or step + 1 == num_steps


def train_clip(
    cfg: PretrainConfig, images: np.ndarray, captions: list[str], log: Log, init: WorldClip | None = None
) -> WorldClip:
    """Stage 1: symmetric InfoNCE on scene/caption pairs; from `init` (a warm start) or from scratch."""
    if init is not None:
        clip = init.train().requires_grad_(True)
    else:
        clip = WorldClip(
            build_text_encoder(cfg.text_hidden_size, cfg.text_num_layers, cfg.max_length),
            build_image_encoder(cfg.image_hidden_size, cfg.image_num_layers, cfg.text_hidden_size),
        )
    token_ids = clip.tokenize(captions)  # (N, max_length)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=cfg.clip_learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.clip_steps, cfg.clip_steps // 10 + 1))
    generator = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.clip_steps):
        index = torch.randint(len(captions), (cfg.clip_batch_size,), generator=generator)
        text_embeds = clip.embed_token_ids(token_ids[index])  # (B, D)
        image_embeds = clip.embed_images(tensor_images(images[index.numpy()]))  # (B, D)
        logits = clip.logit_scale.clamp(max=math.log(100)).exp() * image_embeds @ text_embeds.T  # (B, B)
        targets = torch.arange(len(index))
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if _every(step, cfg.clip_steps):
            accuracy = (logits.argmax(1) == targets).float().mean().item()
            log(f"clip step {step + 1}/{cfg.clip_steps} loss {loss.item():.3f} acc {accuracy:.2f}")
    return clip.eval().requires_grad_(False)


def object_weights(pixels: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, H, W) of pixels in [-1, 1]: `object_weight` on palette-coloured pixels (objects,
    specks) and the pixel rim around them, else 1 (any background, white, tinted or textured).

    Objects cover a few percent of a scene; without the weight the VAE learns the background and blurs
    the small shapes (a 12-px triangle comes back as an unrecognisable blob).
    """
    rgb = ((pixels + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    objects = torch.from_numpy(segment_colors(rgb) >= 0)[:, None].to(pixels.dtype)
    return 1 + (object_weight - 1) * F.max_pool2d(objects, 3, stride=1, padding=1)


def train_vae(cfg: PretrainConfig, images: np.ndarray, log: Log, init: AutoencoderKL | None = None) -> AutoencoderKL:
    """Stage 2: object-weighted reconstruction (MSE + L1) with a weak KL term; from `init` or from scratch."""
    vae = init.train().requires_grad_(True) if init is not None else build_vae(cfg.vae_channels)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.vae_steps, cfg.vae_steps // 20 + 1))
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    for step in range(cfg.vae_steps):
        index = torch.randint(len(images), (cfg.vae_batch_size,), generator=generator)
        pixels = tensor_images(images[index.numpy()]) * 2 - 1  # (B, 3, 64, 64) in [-1, 1]
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        weights = object_weights(pixels, cfg.vae_object_weight)
        error = reconstruction - pixels
        mse = (weights * error**2).mean()
        loss = mse + 0.1 * (weights * error.abs()).mean() + cfg.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if _every(step, cfg.vae_steps):
            log(f"vae step {step + 1}/{cfg.vae_steps} weighted mse {mse.item():.4f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_pool(
    clip: WorldClip, vae: AutoencoderKL, images: np.ndarray, captions: list[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latent means/stds (N, 4, 16, 16), caption index (N,), caption embeddings (U + 1, L, H); row 0 is ""."""
    unique = ["", *sorted(set(captions))]
    row = {c: i for i, c in enumerate(unique)}
    caption_index = torch.tensor([row[c] for c in captions])
    prompt_embeds = torch.cat(
        [clip.text_encoder(clip.tokenize(unique[i : i + batch_size]))[0] for i in range(0, len(unique), batch_size)]
    )  # (U + 1, L, H)
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        pixels = tensor_images(images[start : start + batch_size]) * 2 - 1
        posterior = vae.encode(pixels).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds), caption_index, prompt_embeds


def train_unet(
    cfg: PretrainConfig,
    latent_means: torch.Tensor,
    latent_stds: torch.Tensor,
    caption_index: torch.Tensor,
    prompt_embeds: torch.Tensor,
    scaling_factor: float,
    log: Log,
    save: Callable[[UNet2DConditionModel, int], None],
    init: UNet2DConditionModel | None = None,
) -> UNet2DConditionModel:
    """Stage 3: epsilon prediction on pre-encoded latents, with empty captions for CFG; returns the EMA.

    Every `unet_save_every` steps the EMA is handed to `save`, so an interrupted run leaves a usable model. With
    `init`, training starts from those weights (a warm start) instead of a random initialisation.
    """
    unet = build_unet(cfg.unet_channels, prompt_embeds.shape[-1])
    if init is not None:
        unet.load_state_dict(init.state_dict())
    ema = build_unet(cfg.unet_channels, prompt_embeds.shape[-1]).requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    noise_scheduler = build_noise_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.unet_steps, cfg.unet_steps // 20 + 1))
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    for step in range(cfg.unet_steps):
        index = torch.randint(len(caption_index), (cfg.unet_batch_size,), generator=generator)
        latents = latent_means[index] + latent_stds[index] * torch.randn(
            latent_means[index].shape, generator=generator
        )
        latents = latents * scaling_factor  # (B, 4, 16, 16)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(num_train_timesteps, (len(index),), generator=generator)  # (B,)
        rows = caption_index[index]
        rows = torch.where(torch.rand(len(index), generator=generator) < cfg.empty_caption_prob, 0, rows)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=prompt_embeds[rows]).sample
        loss = F.mse_loss(prediction, noise)
        step_with_ema(loss, unet, ema, optimizer, scheduler, step, cfg.unet_ema_decay)
        if _every(step, cfg.unet_steps):
            log(f"unet step {step + 1}/{cfg.unet_steps} loss {loss.item():.4f}")
        if (step + 1) % cfg.unet_save_every == 0 and step + 1 < cfg.unet_steps:
            save(ema, step + 1)
    return ema.eval()


def check_reused_clip(cfg: PretrainConfig, clip: WorldClip) -> None:
    """Refuse a reused CLIP whose text tower differs from the config's stage 1, which the stats record."""
    text = clip.text_encoder.config
    found = (text.hidden_size, text.num_hidden_layers, text.max_position_embeddings)
    expected = (cfg.text_hidden_size, cfg.text_num_layers, cfg.max_length)
    if found != expected:
        raise TexforceError(
            f"the reused CLIP's text tower has (hidden size, layers, positions) {found}, the config {expected}"
        )


@dataclass
class Reused:
    """Parts of an earlier run to build on. `clip`, `vae`: used as they are, their stage skipped (the VAE keeps its
    latent scaling). `init_clip`, `init_vae`, `unet`: their stage starts from them (a warm start) instead of a random
    initialisation. None everywhere: everything from scratch."""

    clip: WorldClip | None = None
    vae: AutoencoderKL | None = None
    init_clip: WorldClip | None = None
    init_vae: AutoencoderKL | None = None
    unet: UNet2DConditionModel | None = None


def pretrain(
    cfg: PretrainConfig, out_dir: str | Path, clip_dir: str | Path, log: Log = print, reused: Reused | None = None
) -> dict:
    """Run all three stages and save the pipeline (`out_dir`) and the image side of CLIP (`clip_dir`).

    With `reused` parts, their stages are skipped (CLIP, VAE) or warm-started (U-Net): a U-Net can then be
    retrained on a changed mixture without paying again for the stages before it.
    """
    cfg.validate()
    reused = reused or Reused()
    if reused.unet is not None and reused.vae is None and reused.init_vae is None:
        raise TexforceError("a warm-started U-Net needs the VAE it was trained with (reuse or warm-start it too)")
    for clip in (reused.clip, reused.init_clip):
        if clip is not None:
            check_reused_clip(cfg, clip)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    pool = render_web_pool(cfg.num_scenes, cfg.seed)
    images, captions = pool.images, pool.captions
    timings["render_s"] = time.perf_counter() - start
    clean_share = np.mean([q.defects == 0 for q in pool.qualities])
    log(f"rendered {len(images)} web-like scenes in {timings['render_s']:.1f}s: "
        f"{clean_share:.0%} clean, {pool.truthful.mean():.0%} true captions")  # fmt: skip

    if reused.clip is None:
        start = time.perf_counter()
        clip = train_clip(cfg, images, captions, log, reused.init_clip)
        timings["clip_s"] = time.perf_counter() - start
    else:
        clip = reused.clip
        log("stage 1 skipped: reusing a trained CLIP")
    tag_probe = clip_tag_probe(clip, WebPool(images[:512], captions[:512], pool.qualities[:512], pool.truthful[:512]))
    log(f"clip tag probe: {tag_probe:.3f} of clean / low-quality pictures prefer their own overall tags")

    if reused.vae is None:
        start = time.perf_counter()
        vae = train_vae(cfg, images, log, reused.init_vae)
        timings["vae_s"] = time.perf_counter() - start
    else:
        vae = reused.vae
        log("stage 2 skipped: reusing a trained VAE")
    sample = WebPool(images[:256], captions[:256], pool.qualities[:256], pool.truthful[:256])
    reconstruction = reconstruction_checks(vae, sample)
    log("vae reconstructions: " + ", ".join(f"{k} {v:.3f}" for k, v in reconstruction.items()))

    start = time.perf_counter()
    latent_means, latent_stds, caption_index, prompt_embeds = encode_pool(clip, vae, images, captions)
    if reused.vae is None and reused.unet is None:  # a reused VAE or a warm-started U-Net keeps its latent scale
        vae.register_to_config(scaling_factor=float(1.0 / latent_means.std()))
    scaling_factor = vae.config.scaling_factor
    timings["encode_s"] = time.perf_counter() - start
    log(f"encoded the pool in {timings['encode_s']:.1f}s; latent scaling factor {scaling_factor:.3f}")

    out_dir, clip_dir = Path(out_dir), Path(clip_dir)
    clip.save_image_side(clip_dir)
    stats = {
        "config": asdict(cfg),
        "parameters": {
            "text_encoder": sum(p.numel() for p in clip.text_encoder.parameters()),
            "image_encoder": sum(p.numel() for p in clip.image_encoder.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
        },
        "data_mixture": asdict(WEB_MIX),
        "vae_reconstruction": {k: round(v, 3) for k, v in reconstruction.items()},
        "clip_tag_probe": round(tag_probe, 3),
        "steering_probes": {},
        "clip_reused": reused.clip is not None,
        "vae_reused": reused.vae is not None,
        "warm_started": [name for name in ("init_clip", "init_vae", "unet") if getattr(reused, name) is not None],
        "torch_threads": torch.get_num_threads(),
    }

    def save(unet: UNet2DConditionModel, unet_steps_done: int) -> None:
        pipeline = save_world_pipeline(out_dir, clip, vae, unet)
        if unet_steps_done % cfg.probe_every == 0 or unet_steps_done == cfg.unet_steps:
            probe_start = time.perf_counter()
            probe = steering_probe(pipeline)
            timings["probe_s"] = timings.get("probe_s", 0.0) + time.perf_counter() - probe_start
            stats["steering_probes"][unet_steps_done] = {k: round(v, 3) for k, v in probe.items()}
            log(f"steering probe after {unet_steps_done} U-Net steps: "
                + ", ".join(f"{k} {v:.3f}" for k, v in probe.items()))  # fmt: skip
        stats["parameters"]["unet"] = sum(p.numel() for p in unet.parameters())
        stats["unet_steps_done"] = unet_steps_done
        stats["timings"] = {k: round(v, 1) for k, v in timings.items()}
        stats["timings"]["unet_s"] = round(time.perf_counter() - unet_start - timings.get("probe_s", 0.0), 1)
        stats["timings"]["total_s"] = round(sum(stats["timings"].values()), 1)
        (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        log(f"saved {out_dir} after {unet_steps_done} U-Net steps")

    unet_start = time.perf_counter()
    unet = train_unet(
        cfg, latent_means, latent_stds, caption_index, prompt_embeds, scaling_factor, log, save, reused.unet
    )
    save(unet, cfg.unet_steps)
    return stats


def save_world_pipeline(
    out_dir: Path, clip: WorldClip, vae: AutoencoderKL, unet: UNet2DConditionModel
) -> StableDiffusionPipeline:
    """Write a standard `StableDiffusionPipeline` folder, every component in fp32 (so a plain `from_pretrained`
    gives one dtype under any transformers), in files that load under transformers 4 and 5 (`save_pipeline`)."""
    pipeline = assemble_pipeline(unet, vae, clip.text_encoder, tokenizer=clip.tokenizer)
    save_pipeline(pipeline, out_dir)
    return pipeline
