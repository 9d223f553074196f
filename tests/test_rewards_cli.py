"""`texforce score`: table and CSV output, mixed image sizes, prompts files, one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from texforce.cli.main import main


@pytest.fixture
def image_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(64, 64, 3), (48, 80, 3), (64, 64, 3)]):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_score_prints_a_table_and_writes_csv(image_files: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "scores.csv"
    argv = ["score", *map(str, image_files), "--reward", "jpeg_compressibility:1+jpeg_incompressibility:2"]
    assert main([*argv, "--prompt", "a cat", "--csv", str(out), "--batch-size", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "total", "jpeg_compressibility", "jpeg_incompressibility"]
    assert len(lines) == 1 + 3 + 1 and lines[-1] == f"wrote {out}"
    rows = list(csv.DictReader(out.open()))
    assert [row["image"] for row in rows] == list(map(str, image_files)) and rows[0]["prompt"] == "a cat"
    for row in rows:  # total = 1 * (-size) + 2 * size = size
        assert float(row["total"]) == pytest.approx(float(row["jpeg_incompressibility"]), abs=2e-4)


def test_score_reads_one_prompt_per_image(image_files: list[Path], tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n\nthree\n")
    out = tmp_path / "scores.csv"
    argv = ["score", *map(str, image_files), "--reward", "jpeg_compressibility", "--prompts", str(prompts)]
    assert main([*argv, "--csv", str(out)]) == 0
    assert [row["prompt"] for row in csv.DictReader(out.open())] == ["one", "two", "three"]
    assert capsys.readouterr().out.splitlines()[0].split() == ["image", "jpeg_compressibility"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompts", "missing.txt"], "cannot read prompts file"),
        (["--prompt", "x", "--reward", "nope"], "unknown reward 'nope'"),
        (["--prompt", "x", "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_score_errors_are_one_line(image_files: list[Path], extra: list[str], message: str, capsys) -> None:
    argv = ["score", str(image_files[0]), "--reward", "jpeg_compressibility", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_score_rejects_missing_images_and_wrong_prompt_counts(tmp_path: Path, image_files, capsys) -> None:
    assert main(["score", str(tmp_path / "nope.png"), "--reward", "jpeg_compressibility", "--prompt", "x"]) == 2
    assert "no such image" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("only one\n")
    argv = ["score", *map(str, image_files), "--reward", "jpeg_compressibility", "--prompts", str(prompts)]
    assert main(argv) == 2
    assert "1 prompts for 3 images" in capsys.readouterr().err


def test_score_reports_missing_weights_in_one_line(image_files, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TEXFORCE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    assert main(["score", str(image_files[0]), "--reward", "pickscore", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf download yuvalkirstain/PickScore_v1" in err
