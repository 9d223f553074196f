"""How far can tuning the text encoder go in the world? Two ceilings, measured before any tuning.

1. **Best of N** (`best_of_n`): per held-out prompt, the best exact alignment among N seeds, sampled from the base
   embeddings with the evaluation sampler (deterministic DDIM): what the U-Net already draws for the prompt when
   the noise is right. A policy that moves probability toward those samples has this much room.
2. **Oracle embeddings** (`oracle_embeddings`): per held-out prompt, the prompt embeddings themselves are free
   parameters, optimised by backprop through the whole sampler and the VAE against the learned `world_preference`,
   then judged by the exact reward on fresh seeds. Any text-encoder change only produces *some* embeddings, so
   this bounds what it can reach through the same U-Net (up to the optimiser and the learned reward's accuracy).

If the oracle barely beats the base, the U-Net cannot express what the text encoder would need to say and the
world must be retrained; if it beats it clearly, the text encoder is the bottleneck, as the paper argues for SD.

    texforce world ceiling -o docs/world
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from texforce.architectures import sd_ddim_scheduler
from texforce.sampling import decode, decode_latents, denoise, guided_noise_fn
from texforce.stats import Estimate, estimate

Log = Callable[[str], None]


@dataclass
class CeilingConfig:
    """Every number of one ceiling measurement."""

    num_prompts: int = 32  # held-out prompts of the `world` set (counts, relations, held-out pairings)
    best_of: int = 16
    oracle_steps: int = 40
    oracle_noises: int = 2  # fresh noises per prompt per optimiser step
    oracle_learning_rate: float = 2e-2
    num_eval_seeds: int = 4  # the judge's seeds (EVAL_SEED…), disjoint from the oracle's training noise
    num_steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0
    num_threads: int = 2


EVAL_SEED = 1234  # the in-run evaluation's first seed (config `eval.seed`)


class Sampler:
    """The world pipeline's deterministic DDIM sampler on given prompt embeddings, CFG with the empty prompt."""

    def __init__(self, model_dir: Path | None, num_steps: int, guidance_scale: float) -> None:
        from texforce.world.evaluate import load_world_pipeline

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


def _by_family(values: torch.Tensor, families: Sequence[str]) -> dict[str, Estimate]:
    """Mean ± 95% interval over prompts, per family and for all."""
    out = {name: estimate([v for v, f in zip(values.tolist(), families, strict=True) if f == name])
           for name in dict.fromkeys(families)}  # fmt: skip
    out["all"] = estimate(values.tolist())
    return out


@torch.no_grad()
def judge(sampler: Sampler, embeds: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
    """Exact alignment (S, P) of each prompt's embeddings under each seed's noise."""
    from texforce.world.reward import WorldAlignmentReward

    reward = WorldAlignmentReward()
    return torch.stack([reward(sampler.images(embeds, sampler.noise(len(prompts), s)), prompts) for s in seeds])


def oracle_embeddings(
    sampler: Sampler, prompts: Sequence[str], cfg: CeilingConfig, log: Log
) -> tuple[torch.Tensor, list[float]]:
    """Per-prompt embeddings (P, L, D) optimised against `world_preference` with Adam; and the learned reward
    per step (on that step's training noise)."""
    from texforce.world.reward import WorldPreferenceReward

    reward = WorldPreferenceReward()
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


def measure_ceiling(cfg: CeilingConfig, model_dir: Path | None = None, log: Log = print) -> dict:
    """Base, best-of-N and oracle-embedding alignment of the held-out prompts, per family; a JSON-ready record."""
    from texforce.prompts import load_prompt_set
    from texforce.world.scenes import parse_prompt

    torch.set_num_threads(cfg.num_threads)
    started = time.perf_counter()
    prompts = list(load_prompt_set("world").eval)[: cfg.num_prompts]
    families = [_family(parse_prompt(p)) for p in prompts]
    sampler = Sampler(model_dir, cfg.num_steps, cfg.guidance_scale)
    base = sampler.encode(prompts)
    eval_seeds = [EVAL_SEED + k for k in range(cfg.num_eval_seeds)]
    base_scores = judge(sampler, base, prompts, eval_seeds)  # (S, P)
    log(f"base: {base_scores.mean():.3f} on {len(prompts)} prompts × {len(eval_seeds)} seeds")
    best_seeds = list(range(cfg.seed + 10_000, cfg.seed + 10_000 + cfg.best_of))
    best = judge(sampler, base, prompts, best_seeds).amax(0)  # (P,)
    log(f"best of {cfg.best_of}: {best.mean():.3f}")
    oracle, curve = oracle_embeddings(sampler, prompts, cfg, log)
    oracle_scores = judge(sampler, oracle, prompts, eval_seeds)
    log(f"oracle embeddings: {oracle_scores.mean():.3f}")
    record = {
        "config": asdict(cfg),
        "prompts": prompts,
        "families": families,
        "base": _summary(_by_family(base_scores.mean(0), families)),
        "best_of_n": _summary(_by_family(best, families)),
        "oracle": _summary(_by_family(oracle_scores.mean(0), families)),
        "oracle_vs_base": _summary(_by_family(oracle_scores.mean(0) - base_scores.mean(0), families)),
        "oracle_learned_reward_curve": [round(v, 4) for v in curve],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return record


def _family(spec) -> str:
    """A held-out prompt's family: composition (an unseen colour–shape pairing), relation or count."""
    from texforce.world.scenes import HELDOUT_PAIRS

    if any((o.color, o.shape) in HELDOUT_PAIRS for o in spec.objects):
        return "composition"
    return "relation" if spec.relation is not None else "count"


def _summary(estimates: dict[str, Estimate]) -> dict[str, dict[str, float]]:
    return {k: {"mean": round(e.mean, 4), "ci95": round(e.ci, 4), "n": e.n} for k, e in estimates.items()}


def write_ceiling_page(record: dict, folder: Path) -> Path:
    """`ceiling.json` and `ceiling.md` (a table per family) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ceiling.json").write_text(json.dumps(record, indent=2) + "\n")
    c = record["config"]
    rows = []
    for family in record["base"]:
        cells = [record[k][family] for k in ("base", "best_of_n", "oracle", "oracle_vs_base")]
        shown = " | ".join(f"{x['mean']:.3f} ± {x['ci95']:.3f}" for x in cells)
        rows.append(f"| {family} | {cells[0]['n']} | {shown} |")
    seeds = f"{EVAL_SEED}…{EVAL_SEED + c['num_eval_seeds'] - 1}"
    text = "\n".join([
        "# Ceiling of the world's held-out prompts\n",
        "_Generated by `texforce world ceiling`; do not edit by hand._\n",
        f"Held-out prompts of the `world` set, exact `world_alignment`, DDIM {c['num_steps']} steps (eta 0), "
        f"CFG {c['guidance_scale']}. **base** and **oracle**: mean over seeds {seeds} "
        f"per prompt; **best of {c['best_of']}**: the best of {c['best_of']} other seeds per prompt, base embeddings; "
        f"**oracle**: each prompt's embeddings optimised directly ({c['oracle_steps']} Adam steps, lr "
        f"{c['oracle_learning_rate']}, {c['oracle_noises']} fresh noises per step) by backprop through the whole "
        "sampler against the learned `world_preference`, judged on the evaluation seeds (never optimised on). "
        "± is the 95% interval over prompts.\n",
        "| family | prompts | base | best of N | oracle embeddings | oracle − base |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Wall time {record['seconds']:.0f} s.",
    ])  # fmt: skip
    path = folder / "ceiling.md"
    path.write_text(text + "\n")
    return path
