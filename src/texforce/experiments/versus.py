"""TexForce against prompt engineering, as TextCraftor reports it on SD: one table on the same held-out plain prompts
and seeds — base, prompt-engineered, TexForce-DDPO, TexForce-backprop, U-Net LoRA, and the text + U-Net adapters
stacked without further training — with `world_score`, alignment and quality columns.

The prompt-engineered row is the base model given the prompts rewritten by the variant the ceiling chose on
training prompts (`world/headroom/prompt_engineering.py`;
`docs/world/ceiling.json`); the tuned rows get the plain prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from texforce.experiments.harness import Settings, across_seeds, evaluate, headline_set, lora, phase, train_arm
from texforce.experiments.main_job import timed_train
from texforce.experiments.page import prompt_list, table
from texforce.observe.evaluation import AdapterSetup
from texforce.stats import compare
from texforce.world.headroom.prompt_engineering import PromptVariant

JUDGES = ("world_score", "world_alignment", "world_quality")
ARMS = {"backprop": "world_backprop", "unet": "world_unet"}  # and DDPO: `texforce train world_ddpo`, timed


def engineered_variant(record_path: Path) -> PromptVariant:
    """The prompt-engineered variant the ceiling chose on training prompts."""
    chosen = json.loads(record_path.read_text())["chosen"]["prompt-engineered"]
    return PromptVariant(tuple(chosen["tags"]), chosen["position"], chosen["careful"])


def versus(settings: Settings) -> str:
    """Train the three arms per seed (DDPO as its own timed `texforce train world_ddpo` process, as the default run
    is), judge every row on the ceiling's held-out plain prompts."""
    with phase(settings, "train"):
        runs = {arm: [train_arm(settings, config, seed) for seed in settings.seeds] for arm, config in ARMS.items()}
        runs["ddpo"] = [timed_train(settings, "world_ddpo", seed)[0] for seed in settings.seeds]
    prompts, _, seeds = headline_set(settings)
    variant = engineered_variant(settings.ceiling)
    labels = {"base": ["base"]}
    setups = [AdapterSetup("base")]
    for method in ("ddpo", "backprop", "unet", "stacked"):
        labels[method] = [f"{method}/s{seed}" for seed in settings.seeds]
    for i, seed in enumerate(settings.seeds):
        text, unet = lora(runs["ddpo"][i]), lora(runs["unet"][i])
        setups += [
            AdapterSetup(f"ddpo/s{seed}", text=text),
            AdapterSetup(f"backprop/s{seed}", text=lora(runs["backprop"][i])),
            AdapterSetup(f"unet/s{seed}", unet=unet),
            AdapterSetup(f"stacked/s{seed}", text=text, unet=unet),
        ]
    with phase(settings, "eval"):
        plain = evaluate(settings, setups, prompts, JUDGES, "eval_plain", seeds=seeds, num_prompts=len(prompts))
        rewritten = [variant.apply(p) for p in prompts]
        engineered = evaluate(settings, [AdapterSetup("base")], rewritten, JUDGES, "eval_engineered", seeds=seeds,
                              num_prompts=len(prompts))  # fmt: skip
    rows_of = {
        "base model, plain prompts": (plain, labels["base"]),
        f"prompt-engineered ({variant.name})": (engineered, labels["base"]),
        "TexForce: text-encoder LoRA, DDPO": (plain, labels["ddpo"]),
        "TexForce: text-encoder LoRA, direct backprop": (plain, labels["backprop"]),
        "U-Net LoRA, DDPO": (plain, labels["unet"]),
        "text (DDPO) + U-Net LoRA stacked, no further training": (plain, labels["stacked"]),
    }
    scores = {name: {j: across_seeds(s, names, j) for j in JUDGES} for name, (s, names) in rows_of.items()}
    body = "## Held-out plain prompts\n\n" + table(
        ["model / prompts", *(f"`{j}`" for j in JUDGES)], [[name, *s.values()] for name, s in scores.items()]
    )
    n = plain[("base", JUDGES[0])].n
    body += (
        f"\nEvery row renders the same {len(prompts)} held-out plain prompts × seeds {seeds[0]}…{seeds[-1]} ({n} "
        "images per row and training seed); only the prompt-engineered row rewrites them, with the variant chosen "
        "on training prompts by `texforce world ceiling`. Tuned rows: mean ± 95% interval across training seeds; "
        "base rows have no training seed.\n\n## Verdicts\n\n"
    )
    names = list(scores)
    ddpo, backprop, unet, stacked = (scores[names[k]]["world_score"] for k in (2, 3, 4, 5))
    base_score, engineered_score = scores[names[0]]["world_score"], scores[names[1]]["world_score"]
    verdicts = [
        ("TexForce-DDPO vs base", compare(ddpo, base_score)),
        ("TexForce-backprop vs base", compare(backprop, base_score)),
        ("TexForce-DDPO vs prompt engineering", compare(ddpo, engineered_score)),
        ("TexForce-backprop vs prompt engineering", compare(backprop, engineered_score)),
        ("stacked vs the better single adapter", compare(stacked, max(ddpo, unet, key=lambda e: e.mean))),
    ]
    body += table(["comparison (`world_score`)", "first is"], verdicts)
    body += f"\nHeld-out prompts: {prompt_list(prompts)}\n\n![plain](eval_plain/grid.png)\n"
    return body
