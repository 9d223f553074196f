"""Stacking as the paper means it: a text adapter plugged onto a U-Net that was fine-tuned for something else.

The paper stacks its text-encoder LoRA on an existing fine-tuned U-Net without further training. Here the U-Net
adapter is `world_unet_jpeg` (U-Net LoRA DDPO on JPEG compressibility, the `curves` arm) and the text adapter is
`world_text` (text-encoder LoRA DDPO on `world_score`, the `methods` arm), seed i with seed i; base, each alone and
the stack render the same held-out prompts from the same noises and are judged by both objectives. The claim holds
when the stack keeps each adapter's own gain: above base on both objectives, and on each within 25% of the gain the
adapter trained for it has alone (`verdicts.keeps_gains`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from texforce.experiments.claims import contrast, grid, heldout, prompts_of, records_note, seed_means
from texforce.experiments.harness import Settings, accumulate, lora
from texforce.experiments.page import prompt_list, table
from texforce.experiments.records import load_records
from texforce.experiments.verdicts import keeps_gains, margin_of
from texforce.observe.evaluation import AdapterSetup

OTHER = "jpeg_compressibility"  # what the U-Net adapter was trained for
ARMS = {"text": ("world_text", ()), "unet_jpeg": ("world_unet_jpeg", ())}
LABELS = ("text", "unet_jpeg", "stacked")


def stacking(settings: Settings) -> str:
    """Train the two arms per seed (or reuse them), judge base, each and the stack on held-out prompts."""

    def setups(seed: int, runs: Mapping[str, Path]) -> list[AdapterSetup]:
        text, unet = lora(runs["text"]), lora(runs["unet_jpeg"])
        return [AdapterSetup(f"text/s{seed}", text=text), AdapterSetup(f"unet_jpeg/s{seed}", unet=unet),
                AdapterSetup(f"stacked/s{seed}", text=text, unet=unet)]  # fmt: skip

    evaluations = {"heldout": heldout(settings, "world_text")}
    accumulate(settings, ARMS, LABELS, evaluations, [settings.judge, OTHER], setups, ("text", "unet_jpeg"))
    return stacking_page(settings)


def stacking_page(settings: Settings) -> str:
    records, judge = load_records(settings.output), settings.judge
    seeds = records.complete_seeds(LABELS, ["heldout"])
    names = {
        "base": "base model",
        "text": f"text-encoder LoRA trained on `{judge}`",
        "unet_jpeg": f"U-Net LoRA trained on `{OTHER}`",
        "stacked": "both stacked, no further training",
    }
    rows = [[label, *(seed_means(records, arm, "heldout", r, seeds) for r in (judge, OTHER))]
            for arm, label in names.items()]  # fmt: skip
    body = "## Held-out prompts, judged by both objectives\n\n" + table(["model", f"`{judge}`", f"`{OTHER}`"], rows)
    body += (
        f"\nSeed i's stack is seed i's text adapter (`world_text`) on seed i's U-Net adapter (`world_unet_jpeg`); "
        f"every row renders the same held-out prompts × evaluation seeds. ± is the 95% interval across seeds. "
        f"`{OTHER}` is minus the JPEG size in kB (higher: more compressible).\n\n"
        f"Held-out prompts: {prompt_list(prompts_of(records, 'heldout', judge))}\n"
    )
    body += records_note(records, list(ARMS))
    tasks = []
    for reward, own in ((judge, "text"), (OTHER, "unet_jpeg")):
        gain = contrast(records, "stacked", "base", "heldout", reward, seeds, f"stacked − base, `{reward}`")
        own_gain = contrast(records, own, "base", "heldout", reward, seeds, "").interval.mean
        kept = contrast(records, "stacked", own, "heldout", reward, seeds, f"stacked − {own} alone, `{reward}`",
                        margin_of(own_gain))  # fmt: skip
        tasks.append((gain, kept))
    settings.verdicts.append(
        keeps_gains("a text adapter stacked on a U-Net adapter tuned for another objective keeps both gains", tasks)
    )
    return body + "\n## Grid\n\n" + grid(settings, "heldout", "held-out")
