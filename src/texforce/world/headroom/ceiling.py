"""How far can changing the *text* go in the world? The headroom, measured before any tuning.

On held-out plain prompts of each family, side by side on the same seeds (deterministic DDIM, paired noise):

1. **base**: the plain prompt.
2. **prompt-engineered** (prompt_engineering.py): quality tags and/or the careful phrasing. The variant is chosen on
   *training* prompts only (`select_variant`: every candidate on the same seeds, the best mean `world_score`), then
   applied unchanged to the held-out ones; the best tags-only and careful-only variants are shown too.
3. **best of N**: per prompt, the best `world_score` among N other seeds of the plain prompt — headroom in the noise,
   which no text change can reach.
4. **oracle embeddings**: per prompt, the prompt embeddings themselves optimised by backprop through the whole sampler
   and the VAE against the learned `world_preference`, judged on the evaluation seeds: what any text encoder could
   reach through this U-Net (up to the optimiser and the learned reward's accuracy).

Every row is judged by `world_score` (alignment × quality) and by its two parts. The gap between rows 2 and 1 is the
room a text-encoder adapter is asked to take (issue "Words matter").

    texforce world ceiling -o docs/world
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from texforce.bases.sd import sd_ddim_scheduler
from texforce.sampling import decode, decode_latents, denoise, guided_noise_fn
from texforce.stats import Estimate, estimate
from texforce.world.headroom.prompt_engineering import PLAIN, PromptVariant, candidate_variants

Log = Callable[[str], None]
JUDGES = ("world_score", "world_alignment", "world_quality")
EVAL_SEED = 1234  # the in-run evaluation's first seed (config `eval.seed`)
SELECTION_SEED, BEST_OF_SEED = 20_000, 10_000  # seeds for choosing the variant and for best-of-N: never judged on


@dataclass
class CeilingConfig:
    """Every number of one ceiling measurement."""

    families: tuple[str, ...] = ("single", "count", "relation", "composition")
    prompts_per_family: int = 16  # held-out plain prompts of each family
    selection_prompts: int = 24  # training prompts (single, count, relation) that choose the engineered variant
    selection_seeds: int = 2
    best_of: int = 16
    oracle_steps: int = 30
    oracle_noises: int = 1  # fresh noises per prompt per optimiser step
    oracle_learning_rate: float = 2e-2
    num_eval_seeds: int = 4  # the judge's seeds (EVAL_SEED…), disjoint from every other seed here
    num_steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0
    num_threads: int = 2


class Sampler:
    """The world pipeline's deterministic DDIM sampler on given prompt embeddings, CFG with the empty prompt."""

    def __init__(self, model_dir: Path | None, num_steps: int, guidance_scale: float) -> None:
        from texforce.world.judges.evaluate import load_world_pipeline

        self.model_dir = model_dir
        self.pipe = load_world_pipeline(model_dir)
        for module in (self.pipe.unet, self.pipe.vae, self.pipe.text_encoder):
            module.requires_grad_(False).eval()
        self.scheduler = sd_ddim_scheduler()
        self.num_steps, self.guidance_scale = num_steps, guidance_scale
        self.negative = self.encode([""])  # (1, L, D)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids  # fmt: skip
        return self.pipe.text_encoder(ids)[0]

    def noise(self, count: int, seed: int) -> torch.Tensor:
        """The evaluation noise of `seed`, the same for every one of `count` prompts (as the in-run evaluation)."""
        unet = self.pipe.unet.config
        size = (1, unet.in_channels, unet.sample_size, unet.sample_size)
        return torch.randn(size, generator=torch.Generator().manual_seed(seed)).expand(count, -1, -1, -1)

    def images(self, embeds: torch.Tensor, noise: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Images (B, 3, 64, 64) in [0, 1]; with `grad`, the whole chain keeps its (checkpointed) graph."""
        predict = guided_noise_fn(
            self.pipe.unet, embeds, self.negative.expand(len(embeds), -1, -1), self.guidance_scale
        )
        steps = self.num_steps if grad else 0
        latents = denoise(predict, self.scheduler, noise, self.num_steps, grad_steps=steps, checkpoint=grad)
        return decode(self.pipe.vae, latents, checkpoint=True) if grad else decode_latents(self.pipe.vae, latents)


@torch.no_grad()
def judge(
    sampler: Sampler, embeds: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int]
) -> dict[str, torch.Tensor]:
    """`world_score`, `world_alignment` and `world_quality` (S, P) of each prompt's embeddings under each seed;
    `prompts` are the plain prompts whose claims are judged."""
    from texforce.world.judges.exact import WorldAlignmentReward
    from texforce.world.judges.quality import exact_quality

    reward = WorldAlignmentReward()
    alignment, quality = [], []
    for s in seeds:
        images = sampler.images(embeds, sampler.noise(len(prompts), s))
        alignment.append(reward(images, prompts))
        quality.append(exact_quality(images))
    alignment_, quality_ = torch.stack(alignment), torch.stack(quality)
    return {"world_score": alignment_ * quality_, "world_alignment": alignment_, "world_quality": quality_}


def select_variant(
    sampler: Sampler, prompts: Sequence[str], cfg: CeilingConfig, log: Log
) -> list[tuple[PromptVariant, float]]:
    """Every candidate variant with its mean `world_score` on the (training) `prompts`, best first."""
    seeds = [SELECTION_SEED + k for k in range(cfg.selection_seeds)]
    ranked = []
    candidates = candidate_variants()
    for i, variant in enumerate(candidates):
        scores = judge(sampler, sampler.encode([variant.apply(p) for p in prompts]), prompts, seeds)
        ranked.append((variant, float(scores["world_score"].mean())))
        if (i + 1) % 10 == 0 or i + 1 == len(candidates):
            log(f"selection: {i + 1}/{len(candidates)} variants on {len(prompts)} training prompts")
    return sorted(ranked, key=lambda item: -item[1])


def oracle_embeddings(
    sampler: Sampler, prompts: Sequence[str], cfg: CeilingConfig, log: Log, preference_dir: Path | None = None
) -> tuple[torch.Tensor, list[float]]:
    """Per-prompt embeddings (P, L, D) optimised against `world_preference` with Adam; and the learned reward
    per step (on that step's training noise)."""
    from texforce.world.judges.learned import WorldPreferenceReward

    reward = WorldPreferenceReward(preference_dir, sampler.model_dir)
    embeds = sampler.encode(prompts).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([embeds], lr=cfg.oracle_learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    unet = sampler.pipe.unet.config
    curve, started = [], time.perf_counter()
    repeated = [p for p in prompts for _ in range(cfg.oracle_noises)]
    for step in range(cfg.oracle_steps):
        noise = torch.randn(len(repeated), unet.in_channels, unet.sample_size, unet.sample_size, generator=generator)
        images = sampler.images(embeds.repeat_interleave(cfg.oracle_noises, 0), noise, grad=True)
        scores = reward.differentiable(images, repeated)
        optimizer.zero_grad(set_to_none=True)
        (-scores.mean()).backward()
        optimizer.step()
        curve.append(float(scores.mean()))
        log(f"oracle step {step + 1}/{cfg.oracle_steps}: world_preference {curve[-1]:.3f} "
            f"({time.perf_counter() - started:.0f}s)")  # fmt: skip
    return embeds.detach(), curve


def _by_family(values: torch.Tensor, families: Sequence[str]) -> dict[str, Estimate]:
    """Mean ± 95% interval over prompts (P,), per family and for all."""
    out = {name: estimate([v for v, f in zip(values.tolist(), families, strict=True) if f == name])
           for name in dict.fromkeys(families)}  # fmt: skip
    out["all"] = estimate(values.tolist())
    return out


def _summary(estimates: dict[str, Estimate]) -> dict[str, dict[str, float]]:
    return {k: {"mean": round(e.mean, 4), "ci95": round(e.ci, 4), "n": e.n} for k, e in estimates.items()}


def heldout_prompts(cfg: CeilingConfig) -> tuple[list[str], list[str]]:
    """The held-out plain prompts and their families."""
    from texforce.world.scenes import family_prompts

    prompts = {f: family_prompts(f, "heldout", cfg.prompts_per_family, seed=3) for f in cfg.families}
    return [p for f in cfg.families for p in prompts[f]], [f for f in cfg.families for _ in prompts[f]]


def selection_prompts(cfg: CeilingConfig) -> list[str]:
    """Training-split prompts of the families that have one (never the held-out ones)."""
    from texforce.world.scenes import family_prompts

    families = ("single", "count", "relation")
    share = -(-cfg.selection_prompts // len(families))
    return [p for f in families for p in family_prompts(f, "train", share, seed=5)][: cfg.selection_prompts]


def measure_ceiling(
    cfg: CeilingConfig, model_dir: Path | None = None, preference_dir: Path | None = None, log: Log = print
) -> dict:
    """The headroom rows (see the module docstring) per family and judge; a JSON-ready record."""
    torch.set_num_threads(cfg.num_threads)
    started = time.perf_counter()
    sampler = Sampler(model_dir, cfg.num_steps, cfg.guidance_scale)
    ranked = select_variant(sampler, selection_prompts(cfg), cfg, log)
    chosen = {
        "prompt-engineered": ranked[0][0],
        "tags only": next(v for v, _ in ranked if v.tags and not v.careful),
        "careful phrasing only": PromptVariant(careful=True),
    }
    log(f"chosen on training prompts: {ranked[0][0].name} ({ranked[0][1]:.3f}; plain "
        f"{next(s for v, s in ranked if v == PLAIN):.3f})")  # fmt: skip

    prompts, families = heldout_prompts(cfg)
    eval_seeds = [EVAL_SEED + k for k in range(cfg.num_eval_seeds)]
    rows: dict[str, dict[str, torch.Tensor]] = {}  # row → judge → (P,) mean over seeds
    for name, variant in {"base": PLAIN, **chosen}.items():
        scores = judge(sampler, sampler.encode([variant.apply(p) for p in prompts]), prompts, eval_seeds)
        rows[name] = {k: v.mean(0) for k, v in scores.items()}
        log(f"{name}: world_score {rows[name]['world_score'].mean():.3f}")
    base = sampler.encode(prompts)
    best = judge(sampler, base, prompts, [BEST_OF_SEED + k for k in range(cfg.best_of)])
    top = best["world_score"].argmax(0)  # (P,) the best seed per prompt
    rows[f"best of {cfg.best_of}"] = {k: v.gather(0, top[None])[0] for k, v in best.items()}
    oracle, curve = oracle_embeddings(sampler, prompts, cfg, log, preference_dir)
    rows["oracle embeddings"] = {k: v.mean(0) for k, v in judge(sampler, oracle, prompts, eval_seeds).items()}
    log(f"oracle embeddings: world_score {rows['oracle embeddings']['world_score'].mean():.3f}")
    gap = rows["prompt-engineered"]["world_score"] - rows["base"]["world_score"]
    return {
        "config": asdict(cfg),
        "prompts": prompts,
        "families": families,
        "selection": [{"variant": v.name, "world_score": round(s, 4)} for v, s in ranked],
        "chosen": {name: asdict(v) | {"tags": list(v.tags), "name": v.name} for name, v in chosen.items()},
        "rows": {
            row: {k: _summary(_by_family(v, families)) for k, v in by_judge.items()} for row, by_judge in rows.items()
        },
        "engineered_minus_base": _summary(_by_family(gap, families)),
        "oracle_learned_reward_curve": [round(v, 4) for v in curve],
        "seconds": round(time.perf_counter() - started, 1),
    }
