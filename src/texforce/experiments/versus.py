"""TexForce against prompt engineering, as TextCraftor reports it on SD: one table on the same held-out prompts and
noises — base, TexForce-DDPO, TexForce-backprop, U-Net LoRA, and the text + U-Net adapters stacked without further
training — each given the plain prompts and the prompt-engineered ones (the `engineered` style: the variant
`texforce world ceiling` chose on training prompts), with `world_score`, alignment and quality columns.

Every comparison is paired: per training seed, the mean over images of (row − reference) on the same prompt and
noise, then an interval over training seeds (`verdicts.paired`). The verdicts answer the questions a user asks:
does the adapter raise plain prompts, does it reach prompt engineering without the tags, and does it add to them?
Like the claims of `claims`, `versus_arms` trains and judges only the seeds not yet recorded under the page's runs/
and `versus_page` writes the page from those records alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from texforce.experiments.claims import grid, prompts_of, records_note, seed_means
from texforce.experiments.harness import Settings, accumulate, headline_set, lora
from texforce.experiments.main_job import timed_train
from texforce.experiments.page import prompt_list, table
from texforce.experiments.records import Images, Records, evaluation_key, image_mean, load_records
from texforce.experiments.verdicts import Contrast, beats_each, margin_of, paired, raises, signed
from texforce.observe.evaluation import AdapterSetup

JUDGES = ("world_score", "world_alignment", "world_quality")
ARMS = {"ddpo": "world_ddpo", "backprop": "world_backprop", "unet": "world_unet"}
ROWS = {
    "base": "base model",
    "ddpo": "TexForce: text-encoder LoRA, DDPO (`world_ddpo`)",
    "backprop": "TexForce: text-encoder LoRA, direct backprop (`world_backprop`)",
    "unet": "U-Net LoRA, DDPO (`world_unet`)",
    "stacked": "text (DDPO) + U-Net LoRA stacked, no further training",
}
LABELS = [row for row in ROWS if row != "base"]
STYLES_JUDGED = ("plain", "engineered")
EVALUATION = "styles"  # the headline set in both styles: eval_styles/, recorded as `styles` and `styles:engineered`


def versus_arms(settings: Settings) -> Records:
    """Train the three arms per seed not yet recorded (DDPO as its own timed `texforce train world_ddpo` process, as
    the default run is, so that `styles` reuses it), judge their rows on the ceiling's held-out prompts, plain and
    prompt-engineered."""
    prompts, _, seeds = headline_set(settings)

    def setups(seed: int, runs: Mapping[str, Path]) -> list[AdapterSetup]:
        text, backprop, unet = lora(runs["ddpo"]), lora(runs["backprop"]), lora(runs["unet"])
        return [
            AdapterSetup(f"ddpo/s{seed}", text=text),
            AdapterSetup(f"backprop/s{seed}", text=backprop),
            AdapterSetup(f"unet/s{seed}", unet=unet),
            AdapterSetup(f"stacked/s{seed}", text=text, unet=unet),
        ]

    def ddpo(settings: Settings, seed: int) -> Path:
        return timed_train(settings, ARMS["ddpo"], seed)[0]

    arms = {arm: (config, ()) for arm, config in ARMS.items()}
    options = {"seeds": seeds, "num_prompts": len(prompts), "styles": STYLES_JUDGED}
    return accumulate(settings, arms, LABELS, {EVALUATION: prompts}, JUDGES, setups, ("ddpo", "unet"),
                      trainers={"ddpo": ddpo}, **options)  # fmt: skip


def versus(settings: Settings) -> str:
    """Base · TexForce-DDPO · TexForce-backprop · U-Net LoRA · stacked, each on plain and engineered prompts."""
    versus_arms(settings)
    return versus_page(settings)


def versus_page(settings: Settings) -> str:
    records = load_records(settings.output)
    keys = {style: evaluation_key(EVALUATION, style) for style in STYLES_JUDGED}
    seeds = records.complete_seeds(LABELS, list(keys.values()))

    def by_seed(row: str, style: str, judge: str = JUDGES[0]) -> dict[int, Images] | Images:
        if row == "base":
            return records.base(keys[style], judge)
        return records.arm(row, keys[style], judge, seeds)

    def c(first: str, style: str, second: str, second_style: str, margin: float | None = None) -> Contrast:
        name = f"{first} ({style}) − {second} ({second_style})"
        return paired(by_seed(first, style), by_seed(second, second_style), name, margin)

    table_rows = []
    for style in STYLES_JUDGED:
        for row, label in ROWS.items():
            cells: list[object] = [label, f"`{style}`"]
            cells += [seed_means(records, row, keys[style], judge, seeds) for judge in JUDGES]
            if row == "base":  # no training seed: prompt engineering's own gain, the mean over the same images
                tags = image_mean(by_seed("base", "engineered")) - image_mean(by_seed("base", "plain"))
                cells += ["—" if style == "plain" else f"{tags:+.4f}", "—"]
            else:
                cells += [signed(c(row, style, "base", "plain").interval),
                          signed(c(row, style, "base", "engineered").interval)]  # fmt: skip
            table_rows.append(cells)
    base = by_seed("base", "plain")
    prompts = prompts_of(records, keys["plain"], JUDGES[0])
    noises = sorted({noise for _, noise in base})
    body = "## Held-out prompts, plain and prompt-engineered\n\n" + table(
        ["model", "prompts", *(f"`{j}`" for j in JUDGES), "vs base, plain", "vs base, engineered"], table_rows
    )
    body += (
        f"\nEvery row renders the same {len(prompts)} held-out plain prompts of the headline set × seeds "
        f"{noises[0]}…{noises[-1]} ({len(base)} images per row and training seed), as written (`plain`) or with the "
        "quality tags the ceiling chose on training prompts (`engineered`), each image judged against its plain "
        "prompt. Score columns: mean ± 95% interval across training seeds of each seed's mean (base: one mean). The "
        "last two columns are paired changes against base given plain or engineered prompts (per seed the mean over "
        "the same prompts and noises, then mean ± 95% t-interval over training seeds); base engineered − base plain "
        "is prompt engineering's own gain.\n"
    )
    body += records_note(records, list(ARMS))
    gain = {row: c(row, "plain", "base", "plain").interval.mean for row in ("ddpo", "unet")}
    settings.verdicts += [
        raises("TexForce-DDPO raises held-out plain prompts over base", c("ddpo", "plain", "base", "plain")),
        raises("TexForce-backprop raises held-out plain prompts over base", c("backprop", "plain", "base", "plain")),
        raises(
            "TexForce-DDPO on plain prompts scores above prompt engineering (the tags written on the base model)",
            c("ddpo", "plain", "base", "engineered"),
        ),
        raises(
            "TexForce-backprop on plain prompts scores above prompt engineering",
            c("backprop", "plain", "base", "engineered"),
        ),
        raises(
            "TexForce-DDPO adds to prompt engineering (engineered prompts, adapter vs base)",
            c("ddpo", "engineered", "base", "engineered"),
        ),
        raises(
            "TexForce-backprop adds to prompt engineering (engineered prompts, adapter vs base)",
            c("backprop", "engineered", "base", "engineered"),
        ),
        beats_each(
            "the DDPO text adapter stacked on the U-Net adapter beats each alone (plain prompts)",
            [
                c("stacked", "plain", "ddpo", "plain", margin_of(gain["ddpo"])),
                c("stacked", "plain", "unet", "plain", margin_of(gain["unet"])),
            ],
        ),
    ]
    body += f"\nHeld-out prompts: {prompt_list(prompts)}\n\n"
    body += "## Grid\n\nOne row per configuration and seed judged by the last run.\n\n"
    return body + grid(settings, EVALUATION, "styles")
