"""The `texforce` command line: each verb end to end on the tiny model, and one-line errors."""

import json
import re
import subprocess
import sys

import pytest
from conftest import tiny_overrides
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from texforce.cli.main import main
from texforce.images import MIN_CAPTIONED_SIDE


def test_rewards_lists_registry(capsys):
    assert main(["rewards"]) == 0
    assert "jpeg_compressibility" in capsys.readouterr().out


def test_train_writes_a_complete_run(tiny_model_dir, tmp_path, capsys):
    assert main(["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path)]) == 0
    run = tmp_path / "run"
    assert capsys.readouterr().out.strip() == str(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(
        {"epoch", "reward_mean", "reward_std", "ppo/approx_kl", "ppo/clipfrac", "lr/group0"} <= r.keys() for r in rows
    )
    for name in (
        "config.yaml",
        "eval.json",
        "samples/epoch_00002.png",
        "lora/pytorch_lora_weights.safetensors",
        "lora/run.safetensors",  # the UI file (kohya layout), named after the run
        "lora/text_encoder/adapter_config.json",
        "checkpoints/checkpoint_00002/COMPLETE",
        "checkpoints/checkpoint_00002/lora/run.safetensors",
    ):
        assert (run / name).is_file(), name
    results = json.loads((run / "eval.json").read_text())
    assert {"train", "heldout"} <= results["before"].keys() and results["after"].keys() == results["before"].keys()
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    assert {"reward_mean", "reward/jpeg_compressibility_mean", "ppo/approx_kl", "ppo/clipfrac", "lr/group0",
            "time/sample_s", "faults/dropped_samples"} <= set(scalars)  # fmt: skip
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2]
    for grid in ("epoch_00002", "eval_before_train", "eval_after_heldout"):  # every grid: each tile's score, prompt
        captions = Image.open(run / "samples" / f"{grid}.png").text["Description"].splitlines()
        assert captions and all(re.fullmatch(r"-\d+\.\d{3} · A photo of an? \w+", c) for c in captions), captions
    assert len(events.Images("samples")) == 2 and "A photo of a" in str(events.Tensors("samples/text_summary")[0])


def test_sample_stacks_text_and_unet_adapters(tiny_model_dir, tmp_path, capsys):
    assert (
        main(["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path, unet_lora__use=True, train__num_epochs=1)])
        == 0
    )
    capsys.readouterr()
    lora = tmp_path / "run" / "lora"
    out = tmp_path / "stacked.png"
    args = [
        "sample",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "a photo of a cat",
        "-n",
        "2",
        "--steps",
        "3",
        "-o",
        str(out),
    ]
    assert main([*args, "--text-lora", str(lora / "text_encoder"), "--unet-lora", str(lora)]) == 0
    images = [tmp_path / "stacked_p0_s0.png", tmp_path / "stacked_p0_s1.png"]
    assert capsys.readouterr().out.split() == [str(out), *map(str, images)]
    assert all(Image.open(path).size == (32, 32) for path in images)  # each image, as rendered
    grid = Image.open(out)  # and the grid, each tile captioned with its score (the tiny model's reward) and prompt
    assert grid.width == 2 * MIN_CAPTIONED_SIDE and grid.height > MIN_CAPTIONED_SIDE
    captions = grid.text["Description"].splitlines()
    assert len(captions) == 2 and all(re.fullmatch(r"-\d+\.\d{3} · a photo of a cat", c) for c in captions), captions


def test_fuse_two_runs(tiny_model_dir, tmp_path):
    for seed in (1, 2):
        overrides = tiny_overrides(tiny_model_dir, tmp_path, train__num_epochs=1, seed=seed, run_name=f"r{seed}")
        assert main(["train", "--quiet", *overrides]) == 0
    fused = tmp_path / "fused"
    assert main(["fuse", str(tmp_path / "r1"), str(tmp_path / "r2"), "--weights", "0.5", "0.5", "-o", str(fused)]) == 0
    config = json.loads((fused / "text_encoder" / "adapter_config.json").read_text())
    assert config["r"] == 32 and (fused / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "train.lerning_rate=1"], "unknown config key train.lerning_rate"),
        (["sample", "--model", "no-such-org/no-such-model", "--prompt", "x", "-o", "x.png"], "hf download"),
    ],
)
def test_bad_input_is_one_line_without_traceback(argv, message, tmp_path):
    """In a real process (the full table runs in-process in test_bad_input.py; each start here costs seconds)."""
    result = subprocess.run(
        [sys.executable, "-m", "texforce", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()  # no library warnings around it
    assert line.startswith(f"texforce {argv[0]}: error: ") and message in line, result.stderr
