"""The claims read from training curves: text vs U-Net tuning progress (`curves`) and reward hacking (`hacking`).

Like `claims`, each is a pair: `*_arms` trains the seeds not yet recorded (their per-epoch metrics.jsonl committed
under the page's runs/), `*_page` writes the page from the records alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from texforce.experiments.claims import contrast, grid, heldout, prompts_of, records_note, seed_means
from texforce.experiments.harness import Settings, accumulate, arm_config, lora
from texforce.experiments.page import prompt_list, standalone_svg, table
from texforce.experiments.records import Records, load_records
from texforce.experiments.verdicts import UNDECIDED, Contrast, Verdict, differ, margin_of, over_optimised, signed
from texforce.observe.evaluation import AdapterSetup
from texforce.observe.report import line_chart
from texforce.stats import Estimate, estimate

CURVES = {
    "world_score": {"text": "world_text", "unet": "world_unet"},
    "jpeg_compressibility": {"text_jpeg": "world_text_jpeg", "unet_jpeg": "world_unet_jpeg"},
}


def series(records: Records, arm: str, key: str = "reward_mean") -> dict[int, list[float]]:
    """Per recorded seed, one value of `key` per epoch."""
    return {seed: [row[key] for row in rows] for seed, rows in records.metrics(arm).items()}


def per_epoch(curves: Mapping[int, Sequence[float]]) -> list[Estimate]:
    """Per epoch: mean ± 95% t-interval across the seeds' curves."""
    return [estimate(values) for values in zip(*curves.values(), strict=True)]


def _chart(title: str, curves: dict[str, list[Estimate]]) -> str:
    """A standalone SVG file (namespace and style added) of `report.line_chart`: mean with a ±CI band."""
    epochs = list(range(1, len(next(iter(curves.values()))) + 1))
    lines = [(label, [e.mean for e in c], [e.ci for e in c]) for label, c in curves.items()]
    return standalone_svg(line_chart(title, epochs, lines))


def unrecorded(claim: str, what: str, seeds: int) -> Verdict:
    """The verdict of a claim whose per-seed data were never committed: undecided, and why."""
    return Verdict(claim, f"{seeds} seeds run; {what}", UNDECIDED,
                   f"not re-decidable: {what} (a rerun records them under runs/)")  # fmt: skip


def curves(settings: Settings) -> str:
    """Reward per epoch (training samples) for text vs U-Net tuning, on the world reward and on JPEG."""
    arms = {arm: (config, ()) for pair in CURVES.values() for arm, config in pair.items()}
    accumulate(settings, arms, [], {}, [], lambda seed, runs: [])
    return curves_page(settings)


def curves_page(settings: Settings) -> str:
    records, body, pairs = load_records(settings.output), "", []
    claim = "text-encoder and U-Net tuning progress differently"
    for reward, pair in CURVES.items():
        text, unet = (series(records, arm) for arm in pair)
        seeds = sorted(set(text) & set(unet))
        if not seeds:
            old = settings.output / f"curve_{reward}.svg"
            shown = f"![{reward}](curve_{reward}.svg) (the last run's chart, means across seeds only)\n\n"
            body += f"## Trained on `{reward}`\n\n{shown if old.is_file() else ''}"
            continue
        text, unet = {s: text[s] for s in seeds}, {s: unet[s] for s in seeds}
        measured = {"text LoRA": per_epoch(text), "U-Net LoRA": per_epoch(unet)}
        trained_on = arm_config(settings, pair[next(iter(pair))]).reward
        (settings.output / f"curve_{reward}.svg").write_text(_chart(f"{trained_on} (text vs U-Net LoRA)", measured))
        body += f"## Trained on `{trained_on}`\n\n![{reward}](curve_{reward}.svg)\n\n"
        rows = [[e + 1, t, u] for e, (t, u) in enumerate(zip(*measured.values(), strict=True))]
        body += table(["epoch", "text LoRA", "U-Net LoRA"], rows)
        gain = {arm: {s: c[-1] - c[0] for s, c in by.items()} for arm, by in (("text", text), ("unet", unet))}
        rise = {
            arm: {s: sum(c) / len(c) - c[0] for s, c in by.items()} for arm, by in (("text", text), ("unet", unet))
        }
        size = (sum(gain["text"].values()) + sum(gain["unet"].values())) / (2 * len(seeds))
        for what, by in (("gain", gain), ("mean rise", rise)):
            diff = {s: by["text"][s] - by["unet"][s] for s in seeds}
            pairs.append(Contrast(f"text − U-Net {what}, `{reward}`", diff, margin_of(size)))
        body += (
            f"\nGain from the first to the last epoch: text {signed(estimate(list(gain['text'].values())))}, U-Net "
            f"{signed(estimate(list(gain['unet'].values())))}. Values are the mean reward of each epoch's training "
            "samples (stochastic DDIM, eta 1), as logged in metrics.jsonl: epoch e's samples come from the policy "
            "after e − 1 updates, so epoch 1 is the base model. The band and ± are the 95% t-interval across seeds; "
            "the verdict pairs the arms by training seed (text − U-Net of the same seed).\n\n"
        )
    if pairs:
        settings.verdicts.append(differ(claim, pairs))
    else:
        settings.verdicts.append(unrecorded(claim, "the runs' per-epoch metrics.jsonl were never committed", 3))
        body += "The per-seed metrics.jsonl of these runs were never committed: the verdict cannot be re-decided.\n"
    return body


def hacking(settings: Settings) -> str:
    """Direct backprop on the learned `world_preference` (`world_hacking`) for many steps; the exact judge rides
    along (weight 0) and judges held-out."""
    proxy, judge = settings.proxy, settings.judge
    arms = {"text": ("world_hacking", (f"reward={proxy}:1.0+{judge}:0.0",))}

    def setups(seed: int, runs: Mapping[str, Path]) -> list[AdapterSetup]:
        return [AdapterSetup(f"text/s{seed}", text=lora(runs["text"]))]

    accumulate(settings, arms, ["text"], {"heldout": heldout(settings, "world_hacking")}, [proxy, judge], setups)
    return hacking_page(settings)


def hacking_page(settings: Settings) -> str:
    proxy, judge, records = settings.proxy, settings.judge, load_records(settings.output)
    seeds = records.complete_seeds(["text"], ["heldout"])
    body = "## Per epoch, training samples\n\n"
    curves = {r: series(records, "text", f"reward/{r}_mean") for r in (proxy, judge)}
    falls = proxy_after = None
    recorded = sorted(set(curves[judge]) & set(seeds))  # seeds run before per-run records have no curves
    if recorded:
        epochs = {r: per_epoch({s: curves[r][s] for s in recorded}) for r in (proxy, judge)}
        for name, r, title in (("proxy", proxy, "learned {} (trained on)"), ("judge", judge, "exact {} (judge)")):
            (settings.output / f"curve_{name}.svg").write_text(_chart(title.format(r), {r: epochs[r]}))
        body += (
            "Both rewards score the same samples of each epoch (training prompts, policy after e − 1 updates); only "
            "the learned one is trained on (the exact one has weight 0).\n\n![proxy](curve_proxy.svg) "
            "![judge](curve_judge.svg)\n\n"
        )
        rows = [[e + 1, p, j] for e, (p, j) in enumerate(zip(epochs[proxy], epochs[judge], strict=True))]
        body += table(["epoch", f"learned `{proxy}` (trained on)", f"exact `{judge}` (not trained on)"], rows)
        if recorded == seeds:
            peak = max(range(len(epochs[judge])), key=lambda e: epochs[judge][e].mean)
            falls = Contrast(f"exact `{judge}`, last epoch − epoch {peak + 1} (its peak)",
                             {s: curves[judge][s][-1] - curves[judge][s][peak] for s in seeds})  # fmt: skip
            proxy_after = Contrast(f"learned `{proxy}`, last epoch − epoch {peak + 1}",
                                   {s: curves[proxy][s][-1] - curves[proxy][s][peak] for s in seeds})  # fmt: skip
        else:
            body += (
                f"\nPer-epoch metrics are committed for seeds {', '.join(map(str, recorded))} of "
                f"{', '.join(map(str, seeds))} (the others ran before runs were recorded): the curves are theirs, "
                "and the held-out judging decides.\n"
            )
    else:
        body += "The per-epoch metrics.jsonl of these seeds were never committed; the held-out judging decides.\n"
    body += "\n## Held-out prompts, after training\n\n"
    models = (("base model", "base"), ("text LoRA trained on the learned reward", "text"))
    rows = [[label, *(seed_means(records, arm, "heldout", r, seeds) for r in (proxy, judge))] for label, arm in models]
    body += table(["model", f"`{proxy}`", f"`{judge}`"], rows)
    exact = contrast(records, "text", "base", "heldout", judge, seeds, f"exact `{judge}` held-out, adapter − base")
    settings.verdicts.append(
        over_optimised(
            f"optimising the learned `{proxy}` loses the exact `{judge}` (reward hacking)", exact, falls, proxy_after
        )
    )
    prompts = prompts_of(records, "heldout", judge)
    return (
        body
        + records_note(records, ["text"])
        + f"\nHeld-out prompts: {prompt_list(prompts)}\n\n"
        + grid(settings, "heldout", "held-out")
    )
