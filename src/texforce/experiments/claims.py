"""The paper's claims and the main job, one function each: train the arms, judge them, return the markdown body.

Each composes `train_arm` (the ordinary `texforce train` of a shipped `world_*` config), `evaluate`
(`texforce eval`'s `run_eval`) and `fuse_adapters`; none has its own training or sampling loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from texforce.adapters.files import fuse_adapter_files
from texforce.experiments.harness import Settings, across_seeds, arm_config, evaluate, lora, phase, train_arm
from texforce.experiments.page import prompt_list, standalone_svg, table
from texforce.experiments.verdicts import (
    beats_each,
    better_at_equal_gain,
    differ,
    keeps_gains,
    over_optimised,
    raises,
    signed,
)
from texforce.observe.evaluation import AdapterSetup
from texforce.observe.report import line_chart
from texforce.prompts import load_prompt_set
from texforce.stats import Estimate, compare, estimate


def heldout(settings: Settings, config: str | None = None, source: str | None = None) -> list[str]:
    """Held-out prompts (never trained on) of a prompt set, or of an arm's training set; as many as the budget
    judges."""
    source = source or arm_config(settings, config).prompts.train
    return list(load_prompt_set(source).eval)[: settings.budget.num_eval_prompts]


def methods(settings: Settings) -> str:
    """Base · text LoRA · U-Net LoRA · both stacked (trained apart) · joint, on held-out and `single` prompts."""
    arms = {"text": "world_text", "unet": "world_unet", "joint": "world_joint"}
    with phase(settings, "train"):
        runs = {arm: [train_arm(settings, config, seed) for seed in settings.seeds] for arm, config in arms.items()}
    setups, labels = [AdapterSetup("base")], {"base": ["base"]}
    for method in ("text", "unet", "stacked", "joint"):
        labels[method] = [f"{method}/s{seed}" for seed in settings.seeds]
    for i, seed in enumerate(settings.seeds):
        text, unet, joint = lora(runs["text"][i]), lora(runs["unet"][i]), lora(runs["joint"][i])
        setups += [
            AdapterSetup(f"text/s{seed}", text=text),
            AdapterSetup(f"unet/s{seed}", unet=unet),
            AdapterSetup(f"stacked/s{seed}", text=text, unet=unet),
            AdapterSetup(f"joint/s{seed}", text=joint, unet=joint),
        ]
    judge = settings.judge
    prompt_sets = {"heldout": heldout(settings, "world_text"), "single": heldout(settings, source="world_single")}
    with phase(settings, "eval"):
        evals = {
            name: evaluate(settings, setups, prompts, [judge], f"eval_{name}") for name, prompts in prompt_sets.items()
        }
    scores = {name: {m: across_seeds(s, labels[m], judge) for m in labels} for name, s in evals.items()}
    n_images = {name: evals[name][("base", judge)].n for name in evals}
    names = {
        "base": "base model",
        "text": "text-encoder LoRA DDPO (TexForce)",
        "unet": "U-Net LoRA DDPO",
        "stacked": "text + U-Net stacked (trained apart, no further training)",
        "joint": "text + U-Net trained jointly",
    }
    rows = []
    for method, label in names.items():
        h, s = scores["heldout"][method], scores["single"][method]
        base_h, base_s = scores["heldout"]["base"], scores["single"]["base"]
        rows.append([label, h, f"{h.mean - base_h.mean:+.4f}", s, f"{s.mean - base_s.mean:+.4f}"])
    body = "## Alignment on held-out prompts, and semantics preservation\n\n"
    body += table(["method", f"held-out `{judge}`", "Δ vs base", f"`single` family `{judge}`", "Δ vs base"], rows)
    body += (
        f"\nEach seed's mean is over {n_images['heldout']} held-out images (the first held-out prompts of the "
        f"arms' training set, never trained on: single objects, counts, relations) and {n_images['single']} "
        "images of held-out single-object prompts (the `single` family, what the base model already draws best: a "
        "drop there means the tuning damaged what the model already knew). The base row has no training seed, so no "
        "interval.\n\n"
        f"Held-out prompts: {prompt_list(prompt_sets['heldout'])}\n\nSingle-object prompts: "
        f"{prompt_list(prompt_sets['single'])}\n\n## Comparisons (95% intervals overlapping = no clear difference)\n\n"
    )
    h, s = scores["heldout"], scores["single"]
    kept = {m: _delta(s[m], s["base"]) for m in ("text", "unet")}
    settings.verdicts += [
        raises(
            "text-encoder RL (DDPO) raises held-out alignment",
            h["text"],
            h["base"],
            f"base {h['base']} → text LoRA {h['text']}",
        ),
        beats_each(
            "a text adapter stacked on a separately trained U-Net adapter beats each alone",
            h["stacked"],
            [h["text"], h["unet"]],
            f"stacked {h['stacked']} · text alone {h['text']} · U-Net alone {h['unet']}",
        ),
        better_at_equal_gain(
            "text tuning keeps semantics better than U-Net tuning at equal reward gain",
            (h["text"], h["unet"]),
            (kept["text"], kept["unet"]),
            f"held-out: text {h['text']} · U-Net {h['unet']}; change on `single`: text {signed(kept['text'])} · "
            f"U-Net {signed(kept['unet'])}",
        ),
    ]
    verdicts = [
        ("text LoRA vs base, held-out alignment", compare(h["text"], h["base"])),
        ("U-Net LoRA vs base, held-out alignment", compare(h["unet"], h["base"])),
        ("stacked vs the better single adapter, held-out", compare(h["stacked"], max(h["text"], h["unet"], key=_m))),
        ("joint vs stacked, held-out", compare(h["joint"], h["stacked"])),
        ("held-out gain, text LoRA vs U-Net LoRA (no clear difference = equal gain)", compare(h["text"], h["unet"])),
        (
            "semantics: change on `single`, text LoRA vs U-Net LoRA",
            compare(_delta(s["text"], s["base"]), _delta(s["unet"], s["base"])),
        ),
    ]
    body += table(["comparison", "first is"], verdicts)
    body += "\n## Grids\n\nOne row per configuration and seed, one column per prompt (first evaluation seed).\n\n"
    body += "![held-out](eval_heldout/grid.png)\n\n![single](eval_single/grid.png)\n"
    return body


def _m(e: Estimate) -> float:
    return e.mean


def _delta(a: Estimate, base: Estimate) -> Estimate:
    """`a - base`; the base model has no training seed, so the interval is `a`'s."""
    return Estimate(a.mean - base.mean, a.ci, a.n)


def fusion(settings: Settings, weights: Sequence[float] = (0.5, 0.5)) -> str:
    """A counting and a relations adapter fused by weighted sum, judged on each task's held-out prompts."""
    tasks = {"count": "world_text_count", "relation": "world_text_relation"}
    base = arm_config(settings, "world_text").model.base
    with phase(settings, "train"):
        runs = {task: [train_arm(settings, config, seed) for seed in settings.seeds] for task, config in tasks.items()}
        fused = [
            fuse_adapter_files(
                base, [lora(runs["count"][i]), lora(runs["relation"][i])], weights, settings.runs_dir / f"fused_s{s}"
            )
            for i, s in enumerate(settings.seeds)
        ]
    setups, labels = [AdapterSetup("base")], {"base": ["base"]}
    for adapter in ("count", "relation", "fused"):
        labels[adapter] = [f"{adapter}/s{seed}" for seed in settings.seeds]
    for i, seed in enumerate(settings.seeds):
        setups += [
            AdapterSetup(f"count/s{seed}", text=lora(runs["count"][i])),
            AdapterSetup(f"relation/s{seed}", text=lora(runs["relation"][i])),
            AdapterSetup(f"fused/s{seed}", text=fused[i]),
        ]
    judge, prompt_sets = settings.judge, {task: heldout(settings, config) for task, config in tasks.items()}
    with phase(settings, "eval"):
        evals = {task: evaluate(settings, setups, p, [judge], f"eval_{task}") for task, p in prompt_sets.items()}
    scores = {task: {a: across_seeds(evals[task], labels[a], judge) for a in labels} for task in tasks}
    names = {
        "base": "base model",
        "count": "counting adapter",
        "relation": "relations adapter",
        "fused": f"fused ({weights[0]:g} · counting + {weights[1]:g} · relations)",
    }
    rows = [[label, scores["count"][a], scores["relation"][a]] for a, label in names.items()]
    body = "## Held-out alignment per task\n\n"
    body += table(["adapter", f"counting prompts `{judge}`", f"relation prompts `{judge}`"], rows)
    body += (
        f"\nFused with `texforce.adapters.files.fuse_adapters` (exact weighted sum of the LoRA updates, weights "
        f"{', '.join(f'{w:g}' for w in weights)}), no further training; seed i's fused adapter sums seed i's "
        "task adapters.\n\n"
        f"Counting prompts: {prompt_list(prompt_sets['count'])}\n\nRelation prompts: "
        f"{prompt_list(prompt_sets['relation'])}\n\n## Comparisons\n\n"
    )
    c, r = scores["count"], scores["relation"]
    settings.verdicts.append(
        keeps_gains(
            "fused task adapters keep both gains",
            [(c["fused"], c["count"], c["base"]), (r["fused"], r["relation"], r["base"])],
            f"counting prompts: base {c['base']} · counting adapter {c['count']} · fused {c['fused']}; relation "
            f"prompts: base {r['base']} · relations adapter {r['relation']} · fused {r['fused']}",
        )
    )
    verdicts = [
        ("fused vs base, counting", compare(c["fused"], c["base"])),
        ("fused vs base, relations", compare(r["fused"], r["base"])),
        ("fused vs counting adapter, counting", compare(c["fused"], c["count"])),
        ("fused vs relations adapter, relations", compare(r["fused"], r["relation"])),
    ]
    body += table(["comparison", "first is"], verdicts)
    body += "\n## Grids\n\n![counting](eval_count/grid.png)\n\n![relations](eval_relation/grid.png)\n"
    return body


def epoch_rewards(run_dir: Path, key: str = "reward_mean") -> list[float]:
    """One value of `key` per epoch from a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[key] for line in lines if line.strip()]


def seed_curves(runs: Sequence[Path], key: str = "reward_mean") -> list[Estimate]:
    """Per epoch: mean ± 95% t-interval across the seeds' runs."""
    series = [epoch_rewards(run, key) for run in runs]
    return [estimate(values) for values in zip(*series, strict=True)]


def _chart(title: str, curves: dict[str, list[Estimate]]) -> str:
    """A standalone SVG file (namespace and style added) of `report.line_chart`: mean with a ±CI band."""
    epochs = list(range(1, len(next(iter(curves.values()))) + 1))
    series = [(label, [e.mean for e in c], [e.ci for e in c]) for label, c in curves.items()]
    return standalone_svg(line_chart(title, epochs, series))


def curves(settings: Settings) -> str:
    """Reward per epoch (training samples) for text vs U-Net tuning, on the world reward and on JPEG."""
    arms = {
        "world_score": {"text": "world_text", "unet": "world_unet"},
        "jpeg_compressibility": {"text": "world_text_jpeg", "unet": "world_unet_jpeg"},
    }
    body, pairs, evidence = "", [], []
    for reward, pair in arms.items():
        with phase(settings, "train"):
            runs = {
                arm: [train_arm(settings, config, seed) for seed in settings.seeds] for arm, config in pair.items()
            }
        measured = {arm: seed_curves(r) for arm, r in runs.items()}
        trained_on = arm_config(settings, pair["text"]).reward
        chart = _chart(
            f"{trained_on} (text vs U-Net LoRA)", {"text LoRA": measured["text"], "U-Net LoRA": measured["unet"]}
        )
        (settings.output / f"curve_{reward}.svg").write_text(chart)
        body += f"## Trained on `{trained_on}`\n\n![{reward}](curve_{reward}.svg)\n\n"
        rows = [[epoch + 1, t, u] for epoch, (t, u) in enumerate(zip(measured["text"], measured["unet"], strict=True))]
        body += table(["epoch", "text LoRA", "U-Net LoRA"], rows)
        series = {arm: [epoch_rewards(run) for run in r] for arm, r in runs.items()}  # per seed, per epoch
        gains = {arm: estimate([c[-1] - c[0] for c in s]) for arm, s in series.items()}
        rises = {arm: estimate([sum(c) / len(c) - c[0] for c in s]) for arm, s in series.items()}
        pairs += [(gains["text"], gains["unet"]), (rises["text"], rises["unet"])]
        evidence.append(
            f"`{trained_on}`: gain text {signed(gains['text'])} · U-Net {signed(gains['unet'])}; mean rise over the "
            f"epochs text {signed(rises['text'])} · U-Net {signed(rises['unet'])}"
        )
        body += (
            f"\nGain from the first to the last epoch: text {signed(gains['text'])}, U-Net {signed(gains['unet'])}; "
            f"mean rise over all epochs (how fast it gains): text {signed(rises['text'])}, U-Net "
            f"{signed(rises['unet'])}. Values are the mean reward of each epoch's training samples (stochastic DDIM, "
            "eta 1), as logged in metrics.jsonl: epoch e's samples come from the policy after e − 1 updates, so epoch "
            "1 is the base model. The band and ± are the 95% t-interval across seeds (per seed: last − first epoch, "
            "and the mean over epochs − the first).\n\n"
        )
    settings.verdicts.append(differ("text-encoder and U-Net tuning progress differently", pairs, "; ".join(evidence)))
    return body


def hacking(settings: Settings) -> str:
    """Direct backprop on the learned `world_preference` (`world_hacking`) for many steps; the exact judge rides
    along (weight 0) and judges held-out."""
    proxy, judge = settings.proxy, settings.judge
    spec = f"reward={proxy}:1.0+{judge}:0.0"
    with phase(settings, "train"):
        runs = [train_arm(settings, "world_hacking", seed, [spec]) for seed in settings.seeds]
    per_epoch = {r: seed_curves(runs, f"reward/{r}_mean") for r in (proxy, judge)}
    chart_proxy = _chart(f"learned {proxy} (trained on)", {proxy: per_epoch[proxy]})
    chart_judge = _chart(f"exact {judge} (judge)", {judge: per_epoch[judge]})
    (settings.output / "curve_proxy.svg").write_text(chart_proxy)
    (settings.output / "curve_judge.svg").write_text(chart_judge)
    labels = [f"text/s{seed}" for seed in settings.seeds]
    setups = [AdapterSetup("base")] + [
        AdapterSetup(label, text=lora(run)) for label, run in zip(labels, runs, strict=True)
    ]
    prompts = heldout(settings, "world_hacking")
    with phase(settings, "eval"):
        summaries = evaluate(settings, setups, prompts, [proxy, judge], "eval_heldout")
    body = (
        "## Per epoch, training samples\n\nBoth rewards score the same samples of each epoch (training prompts, "
        "policy after e − 1 updates); only the learned one is trained on (the exact one has weight 0).\n\n"
        "![proxy](curve_proxy.svg) ![judge](curve_judge.svg)\n\n"
    )
    rows = [[e + 1, p, j] for e, (p, j) in enumerate(zip(per_epoch[proxy], per_epoch[judge], strict=True))]
    body += table(["epoch", f"learned `{proxy}` (trained on)", f"exact `{judge}` (not trained on)"], rows)
    body += "\n" + divergence(per_epoch[proxy], per_epoch[judge]) + "\n\n## Held-out prompts, after training\n\n"
    rows = [
        [label, across_seeds(summaries, names, proxy), across_seeds(summaries, names, judge)]
        for label, names in (("base model", ["base"]), ("text LoRA trained on the learned reward", labels))
    ]
    body += table(["model", f"`{proxy}`", f"`{judge}`"], rows)
    judged = (rows[1][2], rows[0][2])
    settings.verdicts.append(
        over_optimised(
            f"optimising the learned `{proxy}` loses the exact `{judge}` (reward hacking)",
            per_epoch[proxy],
            per_epoch[judge],
            judged,
            f"per epoch, first → last: learned {per_epoch[proxy][0]} → {per_epoch[proxy][-1]}, exact "
            f"{per_epoch[judge][0]} → {per_epoch[judge][-1]}; held-out exact: base {judged[1]} → {judged[0]}",
        )
    )
    body += f"\nHeld-out prompts: {prompt_list(prompts)}\n\n![held-out](eval_heldout/grid.png)\n"
    return body


def divergence(proxy: Sequence[Estimate], judge: Sequence[Estimate]) -> str:
    """Where the exact reward stops following the learned one: its peak epoch, and what each does after it."""
    peak = max(range(len(judge)), key=lambda e: judge[e].mean)
    after_proxy, after_judge = proxy[-1].mean - proxy[peak].mean, judge[-1].mean - judge[peak].mean
    total_proxy, total_judge = proxy[-1].mean - proxy[0].mean, judge[-1].mean - judge[0].mean
    text = (
        f"Over all epochs the learned reward moved {total_proxy:+.4f} and the exact one {total_judge:+.4f}. "
        f"The exact reward peaks at epoch {peak + 1} ({judge[peak].mean:.4f}); after it the learned reward moves "
        f"{after_proxy:+.4f} and the exact one {after_judge:+.4f}."
    )
    if peak < len(judge) - 1 and after_proxy > 0 and after_judge < 0:
        return text + (
            f" **They diverge after epoch {peak + 1}**: the policy keeps gaining the learned reward while losing "
            "the exact one (reward hacking)."
        )
    return text + " **No divergence measured** within these epochs (the two do not move in opposite directions)."
