"""Benchmark prompt files as published (small hand-written files in their layouts): PartiPrompts' TSV, DrawBench's
CSV, GenEval's JSONL, T2I-CompBench's text files; the layout picked by content, filters by column, one-line errors."""

import json

import pytest
from conftest import tiny_overrides

from texforce.errors import TexforceError
from texforce.prompts import check_prompt_source, load_prompt_file, load_prompt_set
from texforce.run.run_config import load_config

PARTI = (
    "Prompt\tCategory\tChallenge\tNote\n"
    "a red cube\tIllustrations\tBasic\t\n"
    "a corgi wearing a hat, watercolor\tAnimals\tStyle & Format\tcomma inside\n"
    "three dogs\tAnimals\tQuantity\t\n"
    "an owl\tAnimals\tBasic\t\n"
)
DRAWBENCH = (
    "Prompts,Category\n"
    '"A red colored car, parked.",Colors\n'
    "A black colored banana.,Colors\n"
    "Two cats and one dog.,Counting\n"
)
GENEVAL = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [], "prompt": "a photo of two cats"},
    {"tag": "counting", "include": [{"class": "cup", "count": 4}], "prompt": "a photo of four cups"},
]
COMPBENCH = "a green bench and a red car\na blue apple, and a yellow book\n\n"


@pytest.fixture
def files(tmp_path):
    written = {
        "PartiPrompts.tsv": PARTI,
        "drawbench.csv": DRAWBENCH,
        "evaluation_metadata.jsonl": "".join(json.dumps(row) + "\n" for row in GENEVAL),
        "color_val.txt": COMPBENCH,
    }
    for name, text in written.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_each_benchmark_layout(files):
    assert load_prompt_file(files / "PartiPrompts.tsv") == (
        "a red cube", "a corgi wearing a hat, watercolor", "three dogs", "an owl"
    )  # fmt: skip
    assert load_prompt_file(files / "drawbench.csv") == (
        "A red colored car, parked.", "A black colored banana.", "Two cats and one dog."
    )  # fmt: skip
    assert load_prompt_file(files / "evaluation_metadata.jsonl") == tuple(row["prompt"] for row in GENEVAL)
    assert load_prompt_file(files / "color_val.txt") == (
        "a green bench and a red car",
        "a blue apple, and a yellow book",
    )


def test_layout_is_picked_by_content_not_name(files):
    for name, renamed in (("PartiPrompts.tsv", "parti.txt"), ("evaluation_metadata.jsonl", "geneval.txt")):
        (files / renamed).write_text((files / name).read_text())
        assert load_prompt_file(files / renamed) == load_prompt_file(files / name)
    (files / "drawbench.txt").write_text(DRAWBENCH)  # a CSV header naming a prompt column
    assert load_prompt_file(files / "drawbench.txt") == load_prompt_file(files / "drawbench.csv")


def test_filters_by_category_and_challenge(files):
    parti = files / "PartiPrompts.tsv"
    assert load_prompt_file(f"{parti}:Category=Animals") == (
        "a corgi wearing a hat, watercolor",
        "three dogs",
        "an owl",
    )
    assert load_prompt_file(f"{parti}:Category=Animals:Challenge=Basic|Quantity") == ("three dogs", "an owl")
    assert load_prompt_file(f"{files / 'evaluation_metadata.jsonl'}:tag=counting") == (
        "a photo of two cats", "a photo of four cups"
    )  # fmt: skip
    assert load_prompt_set(f"{files / 'drawbench.csv'}:Category=Counting").train == ("Two cats and one dog.",)
    check_prompt_source(f"{parti}:Category=Animals", "prompts.train")


def test_a_run_config_takes_a_filtered_benchmark_file(files, tiny_model_dir, tmp_path):
    source = f"{files / 'PartiPrompts.tsv'}:Challenge=Basic"
    config = load_config(None, tiny_overrides(tiny_model_dir, tmp_path, prompts__train=source))
    assert config.prompts.train == source


@pytest.mark.parametrize(
    "name, content, source_suffix, message",
    [
        ("ids.csv", "id,caption_text\n1,a cat\n", "", r"a CSV table without .*its columns: id, caption_text$"),
        ("meta.tsv", "Text\tKind\na cat\tx\n", "", "a tab-separated table without .*its columns: Text, Kind$"),
        ("rows.jsonl", '{"tag": "x", "caption_id": 1}\n', "", "JSON lines without .*its columns: tag, caption_id$"),
        ("broken.jsonl", '{"prompt": "a"}\n{"prompt": \n', "", "line 2 is not JSON"),
        ("PartiPrompts.tsv", PARTI, ":Difficulty=Hard", "no column Difficulty to filter on; its columns: Prompt,"),
        ("PartiPrompts.tsv", PARTI, ":Category=Food", "holds no prompts that pass the filter"),
        ("color_val.txt", COMPBENCH, ":tag=x", "is a list of prompts, with no columns to filter on"),
    ],
)  # fmt: skip
def test_unknown_layouts_are_one_line_errors_naming_the_columns(tmp_path, name, content, source_suffix, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(TexforceError, match=message) as error:
        load_prompt_file(f"{tmp_path / name}{source_suffix}")
    assert "\n" not in str(error.value)
