import json

import pytest

from texforce.errors import TexforceError
from texforce.prompts import ANIMALS, PROMPT_SETS, load_prompt_file, load_prompt_set


def test_builtin_sets():
    assert len(ANIMALS) == 45 and len(set(ANIMALS)) == 45
    animals = load_prompt_set("animals")
    assert len(animals.train) + len(animals.eval) == 45 and not set(animals.train) & set(animals.eval)
    assert load_prompt_set("hand").train == ("A photo of a hand",)
    assert load_prompt_set("face").train == ("a complete face of a man", "a complete face of a woman")
    expected = {
        "color": "a green colored rabbit",
        "count": "Four wolves in the forest",
        "comp": "A cat and a dog",
        "location": "A dog on the moon",
    }
    for name, prompt in expected.items():
        assert PROMPT_SETS[name]().train == (prompt,)


def test_text_file_skips_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n  \n a dog \n")
    assert load_prompt_file(path) == ("a cat", "a dog")


@pytest.mark.parametrize("data", [["a cat", "a dog"], [{"prompt": "a cat"}, {"text": "a dog", "id": 3}]])
def test_json_formats(tmp_path, data):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    assert load_prompt_file(path) == ("a cat", "a dog")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "\n\n", "holds no prompts"),
        ("bad.json", "[1, 2", "not valid JSON"),
        ("dict.json", '{"prompt": "x"}', "must hold a JSON list"),
        ("items.json", '[{"caption": "x"}]', "item 0 is neither"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TexforceError, match=message):
        load_prompt_file(path)


def test_undecodable_and_missing_files(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(TexforceError, match="not UTF-8"):
        load_prompt_file(path)
    with pytest.raises(TexforceError, match="not found"):
        load_prompt_file(tmp_path / "nope.txt")


def test_separate_eval_source(tmp_path):
    path = tmp_path / "held.txt"
    path.write_text("a photo of a zebra\n")
    prompts = load_prompt_set("hand", str(path))
    assert prompts.train == ("A photo of a hand",) and prompts.eval == ("a photo of a zebra",)
