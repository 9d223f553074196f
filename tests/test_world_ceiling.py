"""`texforce world ceiling` at tiny scale: prompt-engineering variants, their choice on training prompts only, the
paired rows per judge and the generated page with its bars."""

from __future__ import annotations

import json

import pytest

from texforce.cli.main import main
from texforce.world.degrade import POSITIVE_TAGS
from texforce.world.headroom.ceiling import CeilingConfig, heldout_prompts, measure_ceiling, selection_prompts
from texforce.world.headroom.page import bar_checks, write_ceiling_page
from texforce.world.headroom.prompt_engineering import PLAIN, PromptVariant, candidate_variants
from texforce.world.scenes import parse_prompt, spec_split


def test_variants_keep_the_claim_and_cover_every_tag_set():
    variants = candidate_variants()
    assert len(variants) == len(set(variants)) == 2 * (1 + 2 * (2 ** len(POSITIVE_TAGS) - 1))
    prompt = "a photo of two red circles"
    for variant in variants:
        assert parse_prompt(variant.apply(prompt)) == parse_prompt(prompt), variant.name
    assert PLAIN.apply(prompt) == prompt and PLAIN.name == "plain"
    assert PromptVariant(("clean", "sharp"), "suffix").apply(prompt) == "a photo of two red circles, clean, sharp"
    assert PromptVariant(("clean",), careful=True).apply(prompt) == "clean, exactly 2 red circles"
    with pytest.raises(ValueError, match="position"):
        PromptVariant(("clean",), "middle")


def test_the_variant_is_chosen_on_training_prompts_only():
    cfg = CeilingConfig(prompts_per_family=8, selection_prompts=12)
    chosen_on = {parse_prompt(p).canonical() for p in selection_prompts(cfg)}
    judged, families = heldout_prompts(cfg)
    assert all(spec_split(spec) == "train" for spec in chosen_on)
    assert not chosen_on & {parse_prompt(p).canonical() for p in judged}
    assert families.count("composition") == 8 and len(judged) == 32


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    assert main(["world", "pretrain", "--out", str(folder), "--tiny"]) == 0
    assert main(["world", "preference", "--tiny", "--model", str(folder / "model"), "--out",
                 str(folder / "preference")]) == 0  # fmt: skip
    return folder


def test_tiny_ceiling_end_to_end(tiny_world, tmp_path):
    cfg = CeilingConfig(families=("single", "count"), prompts_per_family=2, selection_prompts=3, selection_seeds=1,
                        best_of=2, oracle_steps=1, num_eval_seeds=1, num_steps=2, num_threads=1)  # fmt: skip
    record = measure_ceiling(cfg, tiny_world / "model", tiny_world / "preference", log=lambda _: None)
    rows = ["base", "prompt-engineered", "tags only", "careful phrasing only", "best of 2", "oracle embeddings"]
    assert set(record["rows"]) == set(rows)
    for row in rows:
        for judge in ("world_score", "world_alignment", "world_quality"):
            assert set(record["rows"][row][judge]) == {"single", "count", "all"}
            assert 0 <= record["rows"][row][judge]["all"]["mean"] <= 1
    scores = [s["world_score"] for s in record["selection"]]
    assert scores == sorted(scores, reverse=True) and record["chosen"]["prompt-engineered"]["name"] == (
        record["selection"][0]["variant"])  # fmt: skip
    best = record["rows"]["best of 2"]["world_score"]["all"]["mean"]
    assert best >= record["rows"]["base"]["world_score"]["all"]["mean"] - 1e-6 or cfg.best_of < cfg.num_eval_seeds
    gap = record["engineered_minus_base"]["all"]["mean"]
    engineered, base = (record["rows"][r]["world_score"]["all"]["mean"] for r in ("prompt-engineered", "base"))
    assert gap == pytest.approx(engineered - base, abs=1e-3)
    page = write_ceiling_page(record, tmp_path)
    text = page.read_text()
    assert "## Bars" in text and "prompt-engineered − base" in text and "## world_quality" in text
    assert json.loads((tmp_path / "ceiling.json").read_text())["chosen"] == record["chosen"]
    assert [met for *_, met in bar_checks(record)] == [v >= b for _, v, b, _ in bar_checks(record)]
