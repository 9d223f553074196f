"""Sample efficiency, DDPO against direct backprop: held-out `world_score` against the training samples seen.

Each algorithm's shipped world config (`world_ddpo`, `world_backprop`) trains once per seed with a checkpoint every
1/`CURVE_POINTS` of its epochs; the adapters of every checkpoint (and the final ones) are judged on the headline set
(the held-out plain prompts of every family × the ceiling's seeds), so each curve starts at the base model and ends
where the run's own adapters are. This is the official release's reason for training Turbo by backprop, measured.
"""

from __future__ import annotations

import math
from pathlib import Path

from texforce.experiments.harness import Settings, arm_config, evaluate, headline_set, lora, phase, train_arm
from texforce.experiments.main_job import JUDGES, family_means, headline_judging
from texforce.experiments.page import prompt_list, standalone_svg, table
from texforce.observe.evaluation import AdapterSetup
from texforce.observe.report import line_chart
from texforce.stats import Estimate, estimate
from texforce.training.checkpoint import checkpoint_epoch, complete_checkpoints

ARMS = {"DDPO": "world_ddpo", "backprop": "world_backprop"}
CURVE_POINTS = 6  # checkpoints judged per run besides the base model, evenly spaced, the last at the end
TARGET = 0.10  # the gain whose cost in samples is reported (issue: "the samples each needs to reach +0.10")


def checkpoint_overrides(settings: Settings, config: str) -> list[str]:
    """Keep a checkpoint every 1/`CURVE_POINTS` of the arm's epochs, and all of them."""
    epochs = arm_config(settings, config).train.num_epochs
    every = max(1, epochs // CURVE_POINTS)
    return [f"checkpoint_every={every}", f"keep_checkpoints={epochs // every + 1}"]


def curve_points(run: Path, samples_per_epoch: int) -> list[tuple[int, Path]]:
    """(samples seen, adapters) of a finished run: each kept checkpoint's, the last replaced by the run's final
    adapters (the same weights, or their moving average with `train.ema_decay`)."""
    checkpoints = complete_checkpoints(run)
    points = [(checkpoint_epoch(c) * samples_per_epoch, c / "lora") for c in checkpoints[:-1]]
    return [*points, (checkpoint_epoch(checkpoints[-1]) * samples_per_epoch, lora(run))]


def samples_to_reach(curve: dict[int, Estimate], target: float) -> str:
    """The first number of samples at which the mean gain across seeds reaches `target`."""
    reached = [samples for samples, gain in sorted(curve.items()) if gain.mean >= target]
    return f"{reached[0]:,}" if reached else f"not reached (best {max(g.mean for g in curve.values()):+.3f})"


def efficiency(settings: Settings) -> str:
    """Curves of held-out gain over the base model, mean and 95% band across seeds, per algorithm; the samples each
    needs for +0.10; per seed, each algorithm's final gain and `single` alignment."""
    judge = JUDGES[0]
    prompts, families, seeds = headline_set(settings)
    setups, labels = [AdapterSetup("base")], {name: {} for name in ARMS}  # name → samples → one label per seed
    with phase(settings, "train"):
        for name, config in ARMS.items():
            per_epoch = arm_config(settings, config).samples_per_epoch_per_device
            for seed in settings.seeds:
                run = train_arm(settings, config, seed, checkpoint_overrides(settings, config), tag="_curve")
                for samples, adapters in curve_points(run, per_epoch):
                    label = f"{name}/s{seed}/{samples}"
                    setups.append(AdapterSetup(label, text=adapters))
                    labels[name].setdefault(samples, []).append(label)
    with phase(settings, "eval"):
        evaluate(settings, setups, prompts, JUDGES, "eval_heldout", "world_ddpo", seeds, num_prompts=len(prompts))
    (settings.output / "eval_heldout" / "grid.png").unlink()  # a row per checkpoint (15 MB at full budget): not shown
    means = family_means(settings, Path("eval_heldout"), dict(zip(prompts, families, strict=True)))
    base = {key[1:]: value for key, value in means.items() if key[0] == "base"}  # (judge, family) → mean

    def gain(label: str, judge: str = judge, family: str = "all") -> float:
        return means[(label, judge, family)] - base[(judge, family)]

    curves = {name: {s: estimate([gain(x) for x in row]) for s, row in by.items()} for name, by in labels.items()}
    (settings.output / "curve_efficiency.svg").write_text(_chart(curves, judge))
    body = (
        f"## Held-out `{judge}` gain against training samples seen\n\n![efficiency](curve_efficiency.svg)\n\n"
        f"Base model: `{judge}` {base[(judge, 'all')]:.4f}. Each point judges the adapters of one checkpoint per "
        "seed; the band is the 95% interval across seeds.\n\n"
    )
    rows = [
        [f"{samples:,}", name, curve[samples], _per_seed([gain(x) for x in labels[name][samples]])]
        for name, curve in curves.items()
        for samples in sorted(curve)
    ]
    body += table(["samples seen", "algorithm", "gain over base ± 95%", "per seed"], rows)
    body += f"\n## Samples needed for a held-out gain of +{TARGET:.2f}\n\n"
    body += table(
        ["algorithm", "config", f"samples to mean gain ≥ +{TARGET:.2f}", "samples in the run"],
        [[name, f"`{ARMS[name]}`", samples_to_reach(c, TARGET), f"{max(c):,}"] for name, c in curves.items()],
    )
    body += "\n## Each seed at the end of its run\n\n"
    seed_rows = []
    for name, by in labels.items():
        for seed, label in zip(settings.seeds, by[max(by)], strict=True):
            single = means[(label, "world_alignment", "single")]
            seed_rows.append(
                [name, seed, f"{gain(label):+.4f}", f"{single:.4f} ({gain(label, 'world_alignment', 'single'):+.4f})"]
            )
    body += table(
        [
            "algorithm",
            "seed",
            f"held-out `{judge}` gain",
            f"`single` alignment (base {base[('world_alignment', 'single')]:.4f})",
        ],
        seed_rows,
    )
    body += (
        f"\n{headline_judging(settings, families, seeds)}, the prompts and seeds of `texforce world ceiling`.\n\n"
        f"Prompts: {prompt_list(prompts)}\n"
    )
    return body


def _per_seed(values: list[float]) -> str:
    return " / ".join(f"{v:+.3f}" for v in values)


def _chart(curves: dict[str, dict[int, Estimate]], judge: str) -> str:
    """A standalone SVG: each algorithm's gain (mean ± 95% band) over a shared axis of samples seen."""
    axis = sorted({s for curve in curves.values() for s in curve} | {0})
    series = []
    for name, curve in curves.items():
        points = {0: Estimate(0.0, 0.0, 1), **curve}  # 0 samples: the base model itself
        values = [points[s].mean if s in points else math.nan for s in axis]
        series.append((name, values, [points[s].ci if s in points else 0.0 for s in axis]))
    return standalone_svg(line_chart(f"held-out {judge} gain over the base model", axis, series, "samples seen"))
