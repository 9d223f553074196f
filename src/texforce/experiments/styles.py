"""Prompt styles: does an adapter help every way a user writes a prompt — plain, with quality tags, paraphrased?

The default run and `world_ddpo` (as users run them, `main_job.timed_train`) and the default's ablations (one
ingredient each, `ABLATIONS`) render the headline set's held-out prompts in every style of `prompts/styles.py`
from the same noises as base; `world_flow` does the same against its own base, texforce/world-flow. Each image is
judged against its plain prompt. A configuration's change in a style is paired: per training seed, the mean over
images of (adapter − base) on the same prompt and noise; then a t-interval over training seeds, the seed being the
unit (`seed_change`).
"""

from __future__ import annotations

from collections.abc import Sequence

from texforce.experiments.harness import Settings, evaluate, headline_set, lora, phase, train_arm
from texforce.experiments.main_job import timed_train
from texforce.experiments.page import prompt_list, table
from texforce.experiments.records import image_mean
from texforce.experiments.verdicts import paired
from texforce.observe.evaluation import AdapterSetup, images_by_setup, read_rows
from texforce.prompts.styles import STYLES
from texforce.stats import Estimate, estimate

JUDGES = ("world_score", "world_alignment")
# label → shipped config, trained as the user runs it (`main_job.timed_train`), judged with the default's sampler
ARMS = {"default": "default", "world_ddpo": "world_ddpo"}
FLOW_ARMS = {"world_flow": "world_flow"}  # on texforce/world-flow: judged against its own base …
FLOW_SAMPLER = "world_flow"  # … with this config's base and sampler
# The default's ingredients, one at a time (tag → overrides on the default config, what it tests)
ABLATIONS = {
    "no-anchor": (("backprop.anchor_coef=0",), "no anchor: tagged prompts free to move (the default until 12-06)"),
    "prompts-only": (
        ("backprop.anchor_negative=false",),
        "the anchor holds the tagged prompts but not the negative prompt, which moves every image through guidance",
    ),
    "epochs-5": (("train.num_epochs=5",), "half the epochs: less over-optimisation of the learned reward"),
    "mixed-styles": (
        ("prompts.train_styles=[plain, engineered]", "backprop.anchor_coef=0"),
        "tagged prompts trained on (half the draws, judged as the plain prompt) instead of anchored",
    ),
    "soft-quality": (
        ("reward=world_preference:1.0+world_quality_soft:1.0+world_score:0.0",),
        "the exact, differentiable soft quality added to the learned reward",
    ),
    "rank-4": (("text_lora.rank=4", "text_lora.alpha=4"), "rank 4 instead of 16 (same scale alpha/rank)"),
}
ABLATION_STYLES = ("plain", "engineered")
STYLES_SHOWN = ["plain", "engineered"]  # the grid's
GRID_PROMPTS = 8  # the full evaluations' own grids (not shown on the page; the grid is `eval_grid`'s)
MARGIN = 0.02  # "never below an engineered prompt": the seed interval's lower end at or above −MARGIN


def seed_change(rows: Sequence[dict], labels: Sequence[str], style: str, judge: str, base: str = "base") -> Estimate:
    """The change of the configurations `labels` (one per training seed) against `base` in `style`, judged by
    `judge`: per seed the mean over images of (configuration − base) on the same prompt and seed (`paired`), then
    the mean ± 95% t-interval over training seeds."""
    scores = images_by_setup(rows)
    by_seed = {seed: scores[(label, style, judge)] for seed, label in enumerate(labels)}
    return estimate(list(paired(by_seed, scores[(base, style, judge)], f"{style} change").per_seed.values()))


def base_mean(rows: Sequence[dict], style: str, judge: str, base: str = "base") -> float:
    return image_mean(images_by_setup(rows)[(base, style, judge)])


def styles(settings: Settings) -> str:
    """Train (or reuse) the arms and the ablations per seed; judge every style; the per-style table, the ablation
    table, and a grid of plain / engineered × base / adapter."""
    with phase(settings, "train"):  # the ablations first: a scheduler may be training the arms meanwhile
        ablated = {
            tag: [train_arm(settings, "default", seed, overrides, f"-{tag}") for seed in settings.seeds]
            for tag, (overrides, _) in ABLATIONS.items()
        }
        runs = {
            arm: [timed_train(settings, config, s)[0] for s in settings.seeds]
            for arm, config in (*ARMS.items(), *FLOW_ARMS.items())
        }
    prompts, _, all_seeds = headline_set(settings)
    seeds = all_seeds[:2]  # two noises per prompt and style: 6 styles × 7 configurations on 2 cores
    labels = {arm: [f"{arm}/s{seed}" for seed in settings.seeds] for arm in (*ARMS, *FLOW_ARMS, *ABLATIONS)}
    adapters = {
        arm: [AdapterSetup(label, text=lora(run)) for label, run in zip(labels[arm], trained, strict=True)]
        for arm, trained in (*runs.items(), *ablated.items())
    }
    setups = [AdapterSetup("base"), *(s for arm in ARMS for s in adapters[arm])]
    ablation_setups = [AdapterSetup("base"), *(s for arm in ABLATIONS for s in adapters[arm])]
    flow_setups = [AdapterSetup("base"), *(s for arm in FLOW_ARMS for s in adapters[arm])]
    n = len(prompts)
    with phase(settings, "eval"):
        evaluate(settings, setups, prompts, JUDGES, "eval_styles", "default", seeds, n, list(STYLES), GRID_PROMPTS)
        evaluate(settings, ablation_setups, prompts, JUDGES[:1], "eval_ablations", "default", seeds, n,
                 list(ABLATION_STYLES), GRID_PROMPTS)  # fmt: skip
        grid = [AdapterSetup("base"), AdapterSetup("default/s0", text=lora(runs["default"][0]))]
        evaluate(settings, grid, prompts[::8], JUDGES[:1], "eval_grid", "default", seeds[:1], 8, STYLES_SHOWN)
        evaluate(settings, flow_setups, prompts, JUDGES, "eval_flow_styles", FLOW_SAMPLER, seeds, n, list(STYLES),
                 GRID_PROMPTS)  # fmt: skip
    rows = read_rows(settings.output / "eval_styles")
    ablations = rows + read_rows(settings.output / "eval_ablations")  # the same base, prompts and noises
    flow = read_rows(settings.output / "eval_flow_styles")
    return (
        style_section(settings, rows, labels, seeds, prompts)
        + ablation_section(ablations, labels)
        + flow_section(settings, flow, labels)
    )


def style_section(
    settings: Settings, rows: list[dict], labels: dict[str, list[str]], seeds: list[int], prompts: list[str]
) -> str:
    gap = base_mean(rows, "engineered", JUDGES[0]) - base_mean(rows, "plain", JUDGES[0])
    body = "## Every style, paired against base\n\n" + style_table(rows, labels, ARMS)
    body += (
        f"\n`{JUDGES[0]}` of {len(prompts)} held-out plain prompts of the headline set, each written in every style, "
        "× "
        f"seeds {seeds[0]}…{seeds[-1]}, judged against the plain prompt. Change: per training seed the mean over "
        f"images of (adapter − base) on the same prompt and noise, then mean ± 95% t-interval over the "
        f"{len(settings.seeds)} training seeds (the seed is the unit). Prompt engineering's gap (base engineered − "
        f"base plain): {gap:+.4f}. Every arm renders with the default's sampler, from the same noises as base.\n\n"
        "## What the issue asks\n\n"
    )
    body += bar_checks(rows, labels, ARMS, gap)
    body += (
        "\n## Grid\n\nFirst row pair: base, plain then engineered; second: the default adapter (seed 0), plain then "
        "engineered — the same noise in every tile.\n\n![styles](eval_grid/grid.png)\n\n"
        f"Prompts: {prompt_list(prompts)}\n"
    )
    return body


def flow_section(settings: Settings, rows: list[dict], labels: dict[str, list[str]]) -> str:
    """The same table for the adapters of `FLOW_ARMS`, against texforce/world-flow's own base and sampler."""
    gap = base_mean(rows, "engineered", JUDGES[0]) - base_mean(rows, "plain", JUDGES[0])
    return (
        "\n## texforce/world-flow: the same styles\n\n"
        + style_table(rows, labels, FLOW_ARMS)
        + f"\nAs above, on texforce/world-flow with `{FLOW_SAMPLER}`'s sampler; its base and its "
        f"prompt-engineering gap ({gap:+.4f}) are its own.\n\n" + bar_checks(rows, labels, FLOW_ARMS, gap)
    )


def style_table(rows: list[dict], labels: dict[str, list[str]], arms: Sequence[str]) -> str:
    """One row per style: base, and per arm the adapter's mean, its paired change and its alignment change."""
    table_rows = []
    for style in STYLES:
        base = base_mean(rows, style, JUDGES[0])
        row: list[object] = [f"`{style}`", STYLES[style].description, f"{base:.4f}"]
        for arm in arms:
            change = seed_change(rows, labels[arm], style, JUDGES[0])
            alignment = seed_change(rows, labels[arm], style, JUDGES[1])
            row += [f"{base + change.mean:.4f}", change, alignment]
        table_rows.append(row)
    headers = ["style", "written as", "base"]
    for arm in arms:
        headers += [f"{arm}: adapter", f"{arm}: change", f"{arm}: alignment change"]
    return table(headers, table_rows)


def bar_checks(rows: list[dict], labels: dict[str, list[str]], arms: Sequence[str], gap: float) -> str:
    """The issue's bars, per arm: met or not, with the measured figure."""
    checks = []
    for arm in arms:
        e = seed_change(rows, labels[arm], "engineered", JUDGES[0])
        p = seed_change(rows, labels[arm], "plain", JUDGES[0])
        para = seed_change(rows, labels[arm], "paraphrase", JUDGES[0])
        below = [s for s in STYLES if seed_change(rows, labels[arm], s, JUDGES[1]).high < 0]
        checks += [
            [arm, "engineered prompts: mean ≥ 0 and lower end ≥ −0.02", e, _met(e.mean >= 0 and e.low >= -MARGIN)],
            [arm, "plain prompts: ≥ +0.10", p, _met(p.mean >= 0.10)],
            [arm, "plain prompts: ≥ 80 % of the tags' gain", _share(p.mean, gap), _met(p.mean >= 0.8 * gap > 0)],
            [arm, "paraphrases: ≥ +0.05", para, _met(para.mean >= 0.05)],
            [arm, "`world_alignment` never clearly below base", ", ".join(below) or "none below", _met(not below)],
        ]
    return table(["adapter", "bar", "measured", ""], checks)


def ablation_section(rows: list[dict], labels: dict[str, list[str]]) -> str:
    table_rows = []
    for arm, what in [("default", "the default as shipped"), *((tag, d) for tag, (_, d) in ABLATIONS.items())]:
        table_rows.append([arm, what, *(seed_change(rows, labels[arm], s, JUDGES[0]) for s in ABLATION_STYLES)])
    body = "\n## Ablations of the default (one ingredient each)\n\n" + table(
        ["arm", "what changes", *(f"{s}: change" for s in ABLATION_STYLES)], table_rows
    )
    overrides = "; ".join(f"{tag}: `{' '.join(o)}`" for tag, (o, _) in ABLATIONS.items())
    return body + f"\nSame prompts, noises and interval as above, `{JUDGES[0]}`. Overrides: {overrides}.\n"


def _share(change: float, gap: float) -> str:
    return f"{change / gap:.0%} of {gap:+.4f}" if gap > 0 else f"no gain from the tags ({gap:+.4f})"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"
