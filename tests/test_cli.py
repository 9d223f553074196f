"""The `texforce` command line: each verb end to end on the tiny model, and one-line errors."""

import json
import subprocess
import sys

import pytest
from conftest import tiny_overrides
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from texforce.cli.main import main


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
        "lora/text_encoder/adapter_config.json",
        "checkpoints/checkpoint_00002/COMPLETE",
    ):
        assert (run / name).is_file(), name
    results = json.loads((run / "eval.json").read_text())
    assert {"train", "heldout"} <= results["before"].keys() and results["after"].keys() == results["before"].keys()
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    assert {"reward_mean", "reward/jpeg_compressibility_mean", "ppo/approx_kl", "ppo/clipfrac", "lr/group0",
            "time/sample_s", "faults/dropped_samples"} <= set(scalars)  # fmt: skip
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2]
    assert len(events.Images("samples")) == 2 and "A photo of a" in str(events.Tensors("samples/text_summary")[0])


def test_sample_stacks_text_and_unet_adapters(tiny_model_dir, tmp_path):
    assert (
        main(["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path, unet_lora__use=True, train__num_epochs=1)])
        == 0
    )
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
    assert Image.open(out).size == (64, 32)


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
    errors = [line for line in result.stderr.splitlines() if line.startswith("texforce")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
