"""Compare adapter configurations on fixed seeds: base vs text LoRA vs U-Net LoRA vs both stacked vs fused.

Every configuration renders the same prompts from the same seeds (same initial noise), so differences
come from the adapters alone. Outputs, in one folder written atomically:
    results.csv   configuration, prompt, seed, reward name, score — one row per image and reward
    summary.csv   configuration, reward, n, mean, std, 95% CI (mean ± t·std/√n, Student t)
    summary.json  the same, for scripts
    grid.png      one row per configuration, one column per prompt (first seed), each captioned with the
                  configuration, the scores (one per reward, in order) and the prompt
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from texforce.errors import TexforceError
from texforce.stats import estimate, std

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


@dataclass(frozen=True)
class AdapterSetup:
    """One configuration: `base`, or a text-encoder and/or U-Net adapter (any format `load_adapter` reads)."""

    label: str
    text: Path | None = None
    unet: Path | None = None


def parse_setup(spec: str) -> AdapterSetup:
    """`base`, `text=PATH`, `unet=PATH` or `text=PATH,unet=PATH` (a fused adapter is a `text=` one)."""
    if spec == "base":
        return AdapterSetup("base")
    parts: dict[str, Path] = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in ("text", "unet") or not value or key in parts:
            raise TexforceError(f"--config {spec!r}: write base, text=PATH, unet=PATH or text=PATH,unet=PATH")
        if not Path(value).exists():
            raise TexforceError(f"--config {spec!r}: adapter not found: {value}")
        parts[key] = Path(value)
    return AdapterSetup(spec, parts.get("text"), parts.get("unet"))


@dataclass(frozen=True)
class Summary:
    setup: str
    reward: str
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def summarise(rows: Sequence[dict], setups: Sequence[str], rewards: Sequence[str]) -> list[Summary]:
    """Mean, sample std and 95% interval of each (configuration, reward) over its images."""
    summaries = []
    for setup in setups:
        for reward in rewards:
            scores = [r["score"] for r in rows if r["config"] == setup and r["reward"] == reward]
            e = estimate(scores)
            summaries.append(Summary(setup, reward, e.n, e.mean, std(scores), e.low, e.high))
    return summaries


def load_setup(pipe: DiffusionPipeline, setup: AdapterSetup, base: str, adapter_name: str = "default") -> None:
    """Load a configuration's adapters onto `pipe` (the model `base`)."""
    from texforce.adapters.files import load_adapter, load_text_adapters

    if setup.text is not None:
        load_text_adapters(pipe, setup.text, adapter_name, base)
    if setup.unet is not None:
        load_adapter(pipe, setup.unet, "unet", adapter_name, base)


def check_adapters(base: str, setups: Sequence[AdapterSetup]) -> None:
    """Load every configuration's adapters onto `base`'s architecture on the meta device (no weights read or held:
    every layer's name and shape, which is what an adapter must fit) before anything renders: an adapter of
    another base fails in seconds, not after the configurations before it have rendered."""
    from texforce.bases.loading import load_pipeline

    with_adapters = [setup for setup in setups if setup.text is not None or setup.unet is not None]
    if with_adapters:
        pipe = load_pipeline(base, meta=True)
        for index, setup in enumerate(with_adapters):
            load_setup(pipe, setup, base, f"check{index}")


def render(setup: AdapterSetup, base: str, prompts: Sequence[str], seeds: Sequence[int], args: dict) -> torch.Tensor:
    """Images (len(seeds) * len(prompts), 3, H, W) in [0, 1], seed-major, from a fresh pipeline + adapters, at most
    `args["batch_size"]` per pipeline call (None: all at once)."""
    from texforce.bases.loading import prepare_pipeline
    from texforce.bases.rendering import render_images
    from texforce.config import ModelConfig

    device = args["device"]
    pipe = prepare_pipeline(ModelConfig(base=base, dtype=args["dtype"]), device)
    load_setup(pipe, setup, base)
    pipe.to(device)
    # the same noise for every prompt of a seed and every configuration; SD3's and FLUX's T5 length as the run's
    return render_images(
        pipe,
        list(prompts) * len(seeds),
        [seed for seed in seeds for _ in prompts],
        args.get("batch_size"),
        args["steps"],
        args["guidance_scale"],
        max_sequence_length=args.get("max_sequence_length"),
    )


def run_eval(
    base: str,
    setups: Sequence[AdapterSetup],
    prompts: Sequence[str],
    seeds: Sequence[int],
    reward_specs: Sequence[str],
    output: Path,
    args: dict,
) -> list[Summary]:
    """Render and score every configuration; write results/summary/grid into `output` (atomically).

    Everything that can fail cheaply is checked before the first image renders: the output, every prompt against
    every reward, every adapter against `base`, and the rewards' weights."""
    from texforce.images import caption, make_grid, save_png
    from texforce.observe.runlog import check_writable
    from texforce.rewards import build_reward, check_prompts

    if output.exists():
        raise TexforceError(f"output {output} already exists")
    check_writable(output, "the eval output")
    for spec in reward_specs:
        check_prompts(spec, prompts, "the eval prompts")
    check_adapters(base, setups)
    scorers = {spec: build_reward(spec, args["device"]) for spec in reward_specs}
    rows, first_seed, captions = [], [], []
    for setup in setups:
        images = render(setup, base, prompts, seeds, args)
        first_scores = []
        for spec, scorer in scorers.items():
            scores = scorer(images, list(prompts) * len(seeds)).total.tolist()
            first_scores.append(scores[: len(prompts)])
            for index, score in enumerate(scores):
                seed, prompt = seeds[index // len(prompts)], prompts[index % len(prompts)]
                rows.append({"config": setup.label, "prompt": prompt, "seed": seed, "reward": spec, "score": score})
        first_seed.append(images[: len(prompts)])
        captions += [caption(p, list(s), setup.label) for p, *s in zip(prompts, *first_scores, strict=True)]
    summaries = summarise(rows, [s.label for s in setups], list(reward_specs))
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with open(tmp / "results.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["config", "prompt", "seed", "reward", "score"])
            writer.writeheader()
            writer.writerows(rows)
        with open(tmp / "summary.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["config", "reward", "n", "mean", "std", "ci95_low", "ci95_high"])
            for s in summaries:
                writer.writerow([s.setup, s.reward, s.n, *(f"{v:.6g}" for v in (s.mean, s.std, s.ci_low, s.ci_high))])
        (tmp / "summary.json").write_text(json.dumps([s.__dict__ for s in summaries], indent=2))
        save_png(make_grid(torch.cat(first_seed), columns=len(prompts), captions=captions), tmp / "grid.png")
        tmp.rename(output)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TexforceError(f"cannot write {output}: {error.strerror or error}") from None
    return summaries
