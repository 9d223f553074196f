"""The paper's claims on adapters judged held-out, one pair of functions each: `*_arms` trains and judges the seeds
not yet recorded (`harness.accumulate`), `*_page` writes the markdown body and the verdicts from the committed
records alone, so that `texforce experiment NAME --page-only` rewrites a page without training or judging.

Each composes `train_arm` (the ordinary `texforce train` of a shipped `world_*` config), `evaluate` (`texforce
eval`'s `run_eval`) and `fuse_adapter_files`; none has its own training or sampling loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from texforce.adapters.files import fuse_adapter_files
from texforce.experiments.harness import Settings, accumulate, arm_config, lora
from texforce.experiments.page import prompt_list, table
from texforce.experiments.records import Records, image_mean, load_records
from texforce.experiments.verdicts import (
    Contrast,
    beats_each,
    better_at_equal_gain,
    keeps_gains,
    margin_of,
    paired,
    raises,
)
from texforce.observe.evaluation import AdapterSetup
from texforce.prompts import load_prompt_set
from texforce.stats import Estimate, estimate

METHODS = {
    "text": "text-encoder LoRA DDPO (TexForce)",
    "unet": "U-Net LoRA DDPO",
    "stacked": "text + U-Net stacked (trained apart, no further training)",
    "joint": "text + U-Net trained jointly",
}
FUSION = ("count", "relation", "fused")


def heldout(settings: Settings, config: str | None = None, source: str | None = None) -> list[str]:
    """Held-out prompts (never trained on) of a prompt set, or of an arm's training set; as many as the budget
    judges."""
    source = source or arm_config(settings, config).prompts.train
    return list(load_prompt_set(source).eval)[: settings.budget.num_eval_prompts]


def seed_means(records: Records, arm: str, evaluation: str, reward: str, seeds: Sequence[int]) -> Estimate:
    """Mean ± 95% t-interval across training seeds of each seed's mean score; the base model: its one mean."""
    if arm == "base":
        return estimate([image_mean(records.base(evaluation, reward))])
    return estimate([image_mean(images) for images in records.arm(arm, evaluation, reward, seeds).values()])


def prompts_of(records: Records, evaluation: str, reward: str) -> list[str]:
    """The prompts an evaluation judged, in order."""
    return list(dict.fromkeys(prompt for prompt, _ in records.base(evaluation, reward)))


def contrast(records: Records, first: str, second: str, evaluation: str, reward: str, seeds: Sequence[int],
             name: str, margin: float | None = None) -> Contrast:  # fmt: skip
    """`first` − `second` (an arm or "base") paired per training seed on `evaluation`'s images."""
    other = records.base(evaluation, reward) if second == "base" else records.arm(second, evaluation, reward, seeds)
    return paired(records.arm(first, evaluation, reward, seeds), other, name, margin)


def grid(settings: Settings, evaluation: str, caption: str) -> str:
    """The grid of the last judging, when there is one (a page rewritten from records keeps the last one)."""
    path = Path(f"eval_{evaluation}") / "grid.png"
    return f"![{caption}]({path.as_posix()})\n\n" if (settings.output / path).is_file() else ""


def records_note(records: Records, arms: Sequence[str]) -> str:
    """Which seeds of the trained `arms` have per-image scores only: judged before issue #30, imported into runs/
    from the page's eval_*/results.csv, their metrics and adapters never committed."""
    bare = sorted({seed for arm in arms for seed in set(records.seeds(arm)) - set(records.metrics(arm))})
    if not bare:
        return ""
    return (
        f"\nSeeds {', '.join(map(str, bare))}: per-image scores only, imported into `runs/` from the page's "
        "`eval_*/results.csv` (judged before issue #30); their per-epoch metrics.jsonl and adapters were never "
        "committed.\n"
    )


def methods_arms(settings: Settings) -> Records:
    """Train text, U-Net and joint per seed; judge base, each, and text + U-Net stacked, on held-out and `single`."""
    arms = {"text": ("world_text", ()), "unet": ("world_unet", ()), "joint": ("world_joint", ())}

    def setups(seed: int, runs: Mapping[str, Path]) -> list[AdapterSetup]:
        text, unet, joint = lora(runs["text"]), lora(runs["unet"]), lora(runs["joint"])
        return [AdapterSetup(f"text/s{seed}", text=text), AdapterSetup(f"unet/s{seed}", unet=unet),
                AdapterSetup(f"stacked/s{seed}", text=text, unet=unet),
                AdapterSetup(f"joint/s{seed}", text=joint, unet=joint)]  # fmt: skip

    evaluations = {"heldout": heldout(settings, "world_text"), "single": heldout(settings, source="world_single")}
    return accumulate(settings, arms, list(METHODS), evaluations, [settings.judge], setups, ("text", "unet"))


def methods(settings: Settings) -> str:
    """Base · text LoRA · U-Net LoRA · both stacked (trained apart) · joint, on held-out and `single` prompts."""
    methods_arms(settings)
    return methods_page(settings)


def methods_page(settings: Settings) -> str:
    records, judge = load_records(settings.output), settings.judge
    seeds = records.complete_seeds(list(METHODS), ["heldout", "single"])
    scores = {
        ev: {m: seed_means(records, m, ev, judge, seeds) for m in ["base", *METHODS]} for ev in ("heldout", "single")
    }
    h, s = scores["heldout"], scores["single"]
    rows = [[label, h[m], f"{h[m].mean - h['base'].mean:+.4f}", s[m], f"{s[m].mean - s['base'].mean:+.4f}"]
            for m, label in {"base": "base model", **METHODS}.items()]  # fmt: skip
    body = f"## `{judge}` on held-out prompts, and semantics preservation\n\n"
    body += table(["method", f"held-out `{judge}`", "Δ vs base", f"`single` family `{judge}`", "Δ vs base"], rows)
    n_images = {ev: len(records.base(ev, judge)) for ev in ("heldout", "single")}
    body += (
        f"\nEach seed's mean is over {n_images['heldout']} held-out images (the first held-out prompts of the "
        f"arms' training set, never trained on: single objects, counts, relations) and {n_images['single']} "
        "images of held-out single-object prompts (the `single` family, what the base model already draws best: a "
        "drop there means the tuning damaged what the model already knew); ± is the 95% interval across seeds. "
        "The base row has no training seed, so no interval.\n\n"
        f"Held-out prompts: {prompt_list(prompts_of(records, 'heldout', judge))}\n\nSingle-object prompts: "
        f"{prompt_list(prompts_of(records, 'single', judge))}\n"
    )
    body += records_note(records, ["text", "unet", "joint"])

    def c(first: str, second: str, ev: str = "heldout", margin: float | None = None) -> Contrast:
        name = f"{first} − {second}{'' if ev == 'heldout' else f', `{ev}`'}"
        return contrast(records, first, second, ev, judge, seeds, name.replace("unet", "U-Net"), margin)

    gain = {m: c(m, "base").interval.mean for m in ("text", "unet")}
    settings.verdicts += [
        raises(f"text-encoder RL (DDPO) raises the held-out reward (`{judge}`)", c("text", "base")),
        beats_each(
            "a text adapter stacked on a separately trained U-Net adapter beats each alone",
            [
                c("stacked", "text", margin=margin_of(gain["text"])),
                c("stacked", "unet", margin=margin_of(gain["unet"])),
            ],
        ),
        better_at_equal_gain(
            "text tuning keeps semantics better than U-Net tuning at equal reward gain",
            c("text", "unet", margin=margin_of((gain["text"] + gain["unet"]) / 2)),
            c("text", "unet", "single"),
        ),
    ]
    others = [c("unet", "base"), c("stacked", "base"), c("joint", "stacked"), c("text", "base", "single"),
              c("unet", "base", "single")]  # fmt: skip
    body += "\n## Other paired contrasts (not claims)\n\n" + table(
        ["contrast", "difference", "99% interval", "seeds"],
        [[o.name, f"{o.interval.mean:+.4f}", f"[{o.interval.low:+.4f}, {o.interval.high:+.4f}]", o.interval.n]
         for o in others],
    )  # fmt: skip
    body += "\n## Grids\n\nOne row per configuration and seed judged by the last run, one column per prompt.\n\n"
    return body + grid(settings, "heldout", "held-out") + grid(settings, "single", "single")


def fusion_arms(settings: Settings, weights: Sequence[float]) -> Records:
    """Train a counting and a relations adapter per seed, fuse them, judge all on each task's held-out prompts."""
    tasks = {"count": ("world_text_count", ()), "relation": ("world_text_relation", ())}
    base = arm_config(settings, "world_text").model.base

    def setups(seed: int, runs: Mapping[str, Path]) -> list[AdapterSetup]:
        count, relation = lora(runs["count"]), lora(runs["relation"])
        fused = fuse_adapter_files(base, [count, relation], weights, settings.runs_dir / f"fused_s{seed}")
        return [AdapterSetup(f"count/s{seed}", text=count), AdapterSetup(f"relation/s{seed}", text=relation),
                AdapterSetup(f"fused/s{seed}", text=fused)]  # fmt: skip

    evaluations = {task: heldout(settings, config) for task, (config, _) in tasks.items()}
    return accumulate(settings, tasks, FUSION, evaluations, [settings.judge], setups, ("count", "relation"))


def fusion(settings: Settings, weights: Sequence[float] = (0.5, 0.5)) -> str:
    """A counting and a relations adapter fused by weighted sum, judged on each task's held-out prompts."""
    fusion_arms(settings, weights)
    return fusion_page(settings, weights)


def fusion_page(settings: Settings, weights: Sequence[float] = (0.5, 0.5)) -> str:
    records, judge = load_records(settings.output), settings.judge
    seeds = records.complete_seeds(FUSION, ["count", "relation"])
    scores = {
        t: {a: seed_means(records, a, t, judge, seeds) for a in ("base", *FUSION)} for t in ("count", "relation")
    }
    names = {"base": "base model", "count": "counting adapter", "relation": "relations adapter",
             "fused": f"fused ({weights[0]:g} · counting + {weights[1]:g} · relations)"}  # fmt: skip
    rows = [[label, scores["count"][a], scores["relation"][a]] for a, label in names.items()]
    body = f"## `{judge}` on each task's held-out prompts\n\n"
    body += table(["adapter", f"counting prompts `{judge}`", f"relation prompts `{judge}`"], rows)
    body += (
        f"\nFused with `texforce.adapters.files.fuse_adapters` (exact weighted sum of the LoRA updates, weights "
        f"{', '.join(f'{w:g}' for w in weights)}), no further training; seed i's fused adapter sums seed i's "
        "task adapters. ± is the 95% interval across seeds.\n\n"
        f"Counting prompts: {prompt_list(prompts_of(records, 'count', judge))}\n\nRelation prompts: "
        f"{prompt_list(prompts_of(records, 'relation', judge))}\n"
    )
    body += records_note(records, FUSION[:2])
    tasks = []
    for task, own in (("count", "count"), ("relation", "relation")):
        gain = contrast(records, "fused", "base", task, judge, seeds, f"fused − base, {task} prompts")
        own_gain = contrast(records, own, "base", task, judge, seeds, "").interval.mean
        kept = contrast(records, "fused", own, task, judge, seeds, f"fused − {own} adapter, {task} prompts",
                        margin_of(own_gain))  # fmt: skip
        tasks.append((gain, kept))
    settings.verdicts.append(keeps_gains("fused task adapters keep both gains", tasks))
    body += "\n## Grids\n\n" + grid(settings, "count", "counting") + grid(settings, "relation", "relations")
    return body
