"""`texforce experiment`: the TexForce paper's claims, each tested in the offline world by one command.

Each experiment trains its arms with the ordinary trainer (shipped `world_*` configs, several seeds), judges
them with the exact `world_alignment` reward on held-out prompts, and writes `docs/NAME/results.md` (tables,
SVG curves, PNG grids) plus the `docs/experiments.md` index. Nothing in them is written by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from texforce.errors import TexforceError
from texforce.experiments import claims, curves, efficiency, main_job, stacking, styles, versus
from texforce.experiments.harness import BUDGETS, Budget, Settings, fresh_folder
from texforce.experiments.page import write_results


@dataclass(frozen=True)
class Experiment:
    """One claim: its title, the paper's statement, the function that tests it, and the one that writes its page
    from the committed per-run records alone (None: the experiment keeps no records)."""

    title: str
    claim: str
    run: Callable[[Settings], str]
    page: Callable[[Settings], str] | None = None


EXPERIMENTS = {
    "default": Experiment(
        "The main job: `texforce train` on the offline world",
        "Text-encoder RL raises prompt–image alignment (here on held-out prompts never trained on) while preserving "
        "what the model already draws well (the `single` family).",
        main_job.default,
    ),
    "methods": Experiment(
        "Text-encoder vs U-Net tuning, stacked and joint",
        "Text-encoder RL raises the reward and prompt–image alignment and preserves semantics better than U-Net "
        "RL; a text-encoder adapter stacks on a separately trained U-Net adapter without further training and "
        "beats both (SD 1.4, ImageReward: base 0.2154, TexForce 0.4556, ReFL 0.4485, stacked 0.6553).",
        claims.methods,
        claims.methods_page,
    ),
    "stacking": Experiment(
        "Stacking on a U-Net tuned for another objective",
        "A text-encoder adapter plugs onto an existing fine-tuned U-Net without further training and each keeps its "
        "gain: `world_text` (trained on `world_score`) stacked on `world_unet_jpeg` (trained on JPEG "
        "compressibility), both objectives judged.",
        stacking.stacking,
        stacking.stacking_page,
    ),
    "versus": Experiment(
        "TexForce against prompt engineering",
        "(TextCraftor's comparison on SD) Tuning the text encoder learns what prompt engineering does, without the "
        "user writing the tags: base · prompt-engineered · TexForce (DDPO, backprop) · U-Net LoRA · stacked.",
        versus.versus,
        versus.versus_page,
    ),
    "styles": Experiment(
        "Prompt styles: one adapter for every prompt a user writes",
        "(The paper's premise) a tuned text encoder removes the need for careful prompt adjustment: it raises plain "
        "prompts toward what prompt engineering reaches, and does not punish a prompt that already carries quality "
        'tags (the paper\'s own examples are engineered prompts: "Impressionist painting of a cat, high quality").',
        styles.styles,
    ),
    "efficiency": Experiment(
        "Sample efficiency: DDPO against direct backprop",
        "(The official release trains SD-Turbo and SDXL-Turbo text-encoder adapters by direct reward backprop) a "
        "differentiable reward reaches the same gain from far fewer samples than DDPO.",
        efficiency.efficiency,
    ),
    "fusion": Experiment(
        "Fusing task adapters by weighted sum",
        "Several task adapters can be fused by a weighted sum and keep their gains.",
        claims.fusion,
        claims.fusion_page,
    ),
    "curves": Experiment(
        "Learning curves: text-encoder vs U-Net tuning",
        "Text-encoder and U-Net tuning progress differently (the paper's JPEG-compressibility curves).",
        curves.curves,
        curves.curves_page,
    ),
    "hacking": Experiment(
        "Reward hacking: a learned reward judged by the exact one",
        "(Implicit in reward fine-tuning) a learned reward can be over-optimised: direct backprop on the world's "
        "learned preference reward (its ImageReward), judged by exact alignment.",
        curves.hacking,
        curves.hacking_page,
    ),
}


def run_experiment(name: str, settings: Settings) -> Path:
    """Run experiment `name` into `settings.output` (replaced, its committed records kept); returns its results.md.
    With `settings.page_only`, rewrite the page from the records and train and judge nothing."""
    experiment = EXPERIMENTS[name]
    if settings.page_only:
        if experiment.page is None:
            with_records = ", ".join(n for n, e in EXPERIMENTS.items() if e.page)
            raise TexforceError(
                f"{name} keeps no per-run records to rewrite its page from; --page-only: {with_records}"
            )
        body = experiment.page(settings)
        return write_results(settings, name, experiment.title, experiment.claim, body, 0.0)
    fresh_folder(settings.output)
    started = time.perf_counter()
    body = experiment.run(settings)
    seconds = time.perf_counter() - started
    return write_results(settings, name, experiment.title, experiment.claim, body, seconds)


__all__ = ["BUDGETS", "EXPERIMENTS", "Budget", "Experiment", "Settings", "run_experiment"]
