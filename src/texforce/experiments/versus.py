"""TexForce against prompt engineering, as TextCraftor reports it on SD: one table on the same held-out prompts and
noises — base, TexForce-DDPO, TexForce-backprop, U-Net LoRA, and the text + U-Net adapters stacked without further
training — each given the plain prompts and the prompt-engineered ones (the `engineered` style: the variant
`texforce world ceiling` chose on training prompts), with `world_score`, alignment and quality columns.

Every comparison is paired: per training seed, the mean over images of (row − reference) on the same prompt and
noise, then an interval over training seeds (`verdicts.paired`). The verdicts answer the questions a user asks:
does the adapter raise plain prompts, does it reach prompt engineering without the tags, and does it add to them?
"""

from __future__ import annotations

from texforce.experiments.harness import Settings, evaluate, headline_set, lora, phase, train_arm
from texforce.experiments.main_job import timed_train
from texforce.experiments.page import prompt_list, table
from texforce.experiments.records import Images, image_mean
from texforce.experiments.verdicts import Contrast, beats_each, margin_of, paired, raises, signed
from texforce.observe.evaluation import AdapterSetup, images_by_setup, read_rows
from texforce.stats import estimate

JUDGES = ("world_score", "world_alignment", "world_quality")
ARMS = {"backprop": "world_backprop", "unet": "world_unet"}  # and DDPO: `texforce train world_ddpo`, timed
ROWS = {
    "base": "base model",
    "ddpo": "TexForce: text-encoder LoRA, DDPO (`world_ddpo`)",
    "backprop": "TexForce: text-encoder LoRA, direct backprop (`world_backprop`)",
    "unet": "U-Net LoRA, DDPO (`world_unet`)",
    "stacked": "text (DDPO) + U-Net LoRA stacked, no further training",
}
STYLES_JUDGED = ("plain", "engineered")


def versus(settings: Settings) -> str:
    """Train the three arms per seed (DDPO as its own timed `texforce train world_ddpo` process, as the default run
    is), judge every row on the ceiling's held-out prompts, plain and prompt-engineered."""
    with phase(settings, "train"):
        runs = {arm: [train_arm(settings, config, seed) for seed in settings.seeds] for arm, config in ARMS.items()}
        runs["ddpo"] = [timed_train(settings, "world_ddpo", seed)[0] for seed in settings.seeds]
    prompts, _, seeds = headline_set(settings)
    setups = [AdapterSetup("base")]
    for i, seed in enumerate(settings.seeds):
        text, unet = lora(runs["ddpo"][i]), lora(runs["unet"][i])
        setups += [
            AdapterSetup(f"ddpo/s{seed}", text=text),
            AdapterSetup(f"backprop/s{seed}", text=lora(runs["backprop"][i])),
            AdapterSetup(f"unet/s{seed}", unet=unet),
            AdapterSetup(f"stacked/s{seed}", text=text, unet=unet),
        ]
    with phase(settings, "eval"):
        evaluate(settings, setups, prompts, JUDGES, "eval_styles", seeds=seeds, num_prompts=len(prompts),
                 styles=STYLES_JUDGED)  # fmt: skip
    scores = images_by_setup(read_rows(settings.output / "eval_styles"))

    def by_seed(row: str, style: str, judge: str = JUDGES[0]) -> dict[int, Images] | Images:
        if row == "base":
            return scores[("base", style, judge)]
        return {seed: scores[(f"{row}/s{seed}", style, judge)] for seed in settings.seeds}

    def c(first: str, style: str, second: str, second_style: str, margin: float | None = None) -> Contrast:
        name = f"{first} ({style}) − {second} ({second_style})"
        return paired(by_seed(first, style), by_seed(second, second_style), name, margin)

    table_rows = []
    for style in STYLES_JUDGED:
        for row, label in ROWS.items():
            cells: list[object] = [label, f"`{style}`"]
            for judge in JUDGES:
                found = by_seed(row, style, judge)
                images = [found] if row == "base" else list(found.values())
                cells.append(estimate([image_mean(i) for i in images]))
            if row == "base":  # no training seed: prompt engineering's own gain, the mean over the same images
                tags = image_mean(by_seed("base", "engineered")) - image_mean(by_seed("base", "plain"))
                cells += ["—" if style == "plain" else f"{tags:+.4f}", "—"]
            else:
                cells += [signed(c(row, style, "base", "plain").interval),
                          signed(c(row, style, "base", "engineered").interval)]  # fmt: skip
            table_rows.append(cells)
    n = len(scores[("base", "plain", JUDGES[0])])
    body = "## Held-out prompts, plain and prompt-engineered\n\n" + table(
        ["model", "prompts", *(f"`{j}`" for j in JUDGES), "vs base, plain", "vs base, engineered"], table_rows
    )
    body += (
        f"\nEvery row renders the same {len(prompts)} held-out plain prompts of the headline set × seeds "
        f"{seeds[0]}…{seeds[-1]} ({n} images per row and training seed), as written (`plain`) or with the quality "
        "tags the ceiling chose on training prompts (`engineered`), each image judged against its plain prompt. "
        "Score columns: mean ± 95% interval across training seeds of each seed's mean (base: one mean). The last "
        "two columns are paired changes against base given plain or engineered prompts (per seed the mean over the "
        "same prompts and noises, then mean ± 95% t-interval over training seeds); base engineered − base plain is "
        "prompt engineering's own gain.\n\n"
    )
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
    body += f"Held-out prompts: {prompt_list(prompts)}\n\n![styles](eval_styles/grid.png)\n"
    return body
