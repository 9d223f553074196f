"""Compare adapter configurations on fixed seeds: base vs text LoRA vs U-Net LoRA vs both stacked vs fused.

Every configuration renders the same prompts from the same seeds (same initial noise), so differences
come from the adapters alone. Each prompt can also be written in prompt styles (prompts/styles.py: quality tags,
paraphrases, …): the model sees the styled text, the judges the plain prompt. Outputs, in one folder written
atomically:
    results.csv   configuration, style, prompt, seed, reward name, score — one row per image and reward
    summary.csv   configuration, style, reward, n, mean, std, 95% CI (mean ± t·std/√n, Student t)
    summary.json  the same, for scripts
    changes.json  each configuration's paired change against `base` per style and reward (same prompt, same
                  seed; mean and 95% interval over prompts of each prompt's mean change)
    grid.png      one row per configuration and style, one column per prompt (first seed), each captioned with
                  the configuration, the scores (one per reward, in order) and the text the model saw
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from texforce.errors import TexforceError
from texforce.prompts.styles import get_style, styled
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
    style: str = "plain"


def summarise(
    rows: Sequence[dict], setups: Sequence[str], rewards: Sequence[str], styles: Sequence[str] = ("plain",)
) -> list[Summary]:
    """Mean, sample std and 95% interval of each (configuration, style, reward) over its images."""
    summaries = []
    for setup in setups:
        for style in styles:
            for reward in rewards:
                scores = [
                    r["score"]
                    for r in rows
                    if (r["config"], r.get("style", "plain"), r["reward"]) == (setup, style, reward)
                ]
                e = estimate(scores)
                summaries.append(Summary(setup, reward, e.n, e.mean, std(scores), e.low, e.high, style))
    return summaries


@dataclass(frozen=True)
class Change:
    """A configuration's paired change against base in one style and reward: per prompt, the mean over seeds of
    (configuration − base) on the same noise; `mean` ± `ci` (95%, t over prompts)."""

    setup: str
    style: str
    reward: str
    n_prompts: int
    mean: float
    ci: float


def read_rows(folder: Path) -> list[dict]:
    """The rows of an evaluation's results.csv, scores as floats (an older file without styles: all plain)."""
    with open(folder / "results.csv", newline="") as handle:
        return [
            {**row, "style": row.get("style") or "plain", "seed": int(row["seed"]), "score": float(row["score"])}
            for row in csv.DictReader(handle)
        ]


def images_by_setup(rows: Sequence[dict]) -> dict[tuple[str, str, str], dict[tuple[str, int], float]]:
    """Scores by (configuration, style, reward), then by image (prompt, noise seed): what pairing matches on."""
    scores: dict[tuple[str, str, str], dict[tuple[str, int], float]] = {}
    for r in rows:
        scores.setdefault((r["config"], r["style"], r["reward"]), {})[(r["prompt"], r["seed"])] = r["score"]
    return scores


def paired_changes(rows: Sequence[dict], baseline: str = "base") -> list[Change]:
    """Every other configuration's `Change` against `baseline`, per style and reward (empty without a baseline)."""
    scores = images_by_setup(rows)
    changes = []
    for (setup, style, reward), mine in scores.items():
        base = scores.get((baseline, style, reward))
        if setup == baseline or base is None:
            continue
        per_prompt: dict[str, list[float]] = {}
        for (prompt, seed), score in mine.items():
            per_prompt.setdefault(prompt, []).append(score - base[(prompt, seed)])
        e = estimate([sum(v) / len(v) for v in per_prompt.values()])
        changes.append(Change(setup, style, reward, e.n, e.mean, e.ci))
    return changes


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


def render(
    setup: AdapterSetup, base: str, prompts: Sequence[str], seeds: Sequence[int], args: dict, style: str = "plain"
) -> torch.Tensor:
    """Images (len(seeds) * len(prompts), 3, H, W) in [0, 1], seed-major, from a fresh pipeline + adapters, at most
    `args["batch_size"]` per pipeline call (None: all at once); each prompt written in `style`."""
    from texforce.bases.loading import prepare_pipeline
    from texforce.bases.rendering import render_images
    from texforce.config import ModelConfig

    device = args["device"]
    pipe = prepare_pipeline(ModelConfig(base=base, dtype=args["dtype"]), device)
    load_setup(pipe, setup, base)
    pipe.to(device)
    # the same noise for every prompt of a seed and every configuration; SD3's and FLUX's T5 length as the run's
    texts = styled(prompts, get_style(style))
    return render_images(
        pipe,
        texts * len(seeds),
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
    styles: Sequence[str] = ("plain",),
    grid_prompts: int | None = None,
) -> list[Summary]:
    """Render and score every configuration in every prompt style; write results/summary/grid into `output`
    (atomically). The grid shows the first seed of every prompt, or of the first `grid_prompts`.

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
    shown = min(grid_prompts or len(prompts), len(prompts))  # the grid's columns: the first prompts
    for style in styles:
        get_style(style)  # an unknown style fails before anything renders
    for setup in setups:
        for style in styles:
            images = render(setup, base, prompts, seeds, args, style)
            first_scores = []
            for spec, scorer in scorers.items():
                scores = scorer(images, list(prompts) * len(seeds)).total.tolist()  # judged on the plain prompt
                first_scores.append(scores[: len(prompts)])
                for index, score in enumerate(scores):
                    seed, prompt = seeds[index // len(prompts)], prompts[index % len(prompts)]
                    rows.append(
                        {"config": setup.label, "style": style, "prompt": prompt, "seed": seed}
                        | {"reward": spec, "score": score}
                    )
            first_seed.append(images[:shown])
            label = setup.label if style == "plain" else f"{setup.label} · {style}"
            texts = styled(prompts[:shown], get_style(style))
            first = [scores[:shown] for scores in first_scores]
            captions += [caption(p, list(s), label) for p, *s in zip(texts, *first, strict=True)]
    summaries = summarise(rows, [s.label for s in setups], list(reward_specs), list(styles))
    changes = paired_changes(rows)
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with open(tmp / "results.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["config", "style", "prompt", "seed", "reward", "score"])
            writer.writeheader()
            writer.writerows(rows)
        with open(tmp / "summary.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["config", "style", "reward", "n", "mean", "std", "ci95_low", "ci95_high"])
            for s in summaries:
                values = (f"{v:.6g}" for v in (s.mean, s.std, s.ci_low, s.ci_high))
                writer.writerow([s.setup, s.style, s.reward, s.n, *values])
        (tmp / "summary.json").write_text(json.dumps([asdict(s) for s in summaries], indent=2))
        (tmp / "changes.json").write_text(json.dumps([asdict(c) for c in changes], indent=2))
        save_png(make_grid(torch.cat(first_seed), columns=shown, captions=captions), tmp / "grid.png")
        tmp.rename(output)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TexforceError(f"cannot write {output}: {error.strerror or error}") from None
    return summaries
