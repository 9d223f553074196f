"""Bad input, one case per test: a one-line `texforce VERB: error: …`, exit code 2, no traceback, nothing written.

The CLI runs in-process (`main(argv)`); `test_cli.py` checks the same contract through real subprocesses.
"""

from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from texforce.architectures import build_tiny_pipeline
from texforce.cli.main import main
from texforce.config import LoraConfig, load_config, save_config
from texforce.export import save_adapters
from texforce.models import add_lora, load_pipeline


def fails(capsys, argv: list[str], message: str) -> str:
    """Run the CLI; assert exit code 2 and exactly one error line containing `message`."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("texforce ")]
    assert len(lines) == 1 and ": error: " in lines[0] and message in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def train_fails(capsys, tiny_model_dir, tmp_path, message: str, *overrides: str) -> None:
    fails(capsys, ["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path), *overrides], message)
    assert not (tmp_path / "run").exists(), "a failed run must leave no folder behind"


# ------------------------------------------------------------------ config keys, types and ranges
def test_unknown_key_suggests_the_key_in_another_section(capsys, tiny_model_dir, tmp_path):
    line = "unknown config key train.learning_rate; did you mean text_lora.learning_rate or unet_lora.learning_rate?"
    train_fails(capsys, tiny_model_dir, tmp_path, line, "train.learning_rate=1e-4")


def test_misspelt_key_suggests_the_closest(capsys, tiny_model_dir, tmp_path):
    train_fails(capsys, tiny_model_dir, tmp_path, "did you mean sample.num_steps?", "sample.num_step=3")


def test_wrong_type(capsys, tiny_model_dir, tmp_path):
    train_fails(capsys, tiny_model_dir, tmp_path, "train.num_epochs must be int, got 'two'", "train.num_epochs=two")


def test_negative_learning_rate(capsys, tiny_model_dir, tmp_path):
    train_fails(capsys, tiny_model_dir, tmp_path, "text_lora.learning_rate must be > 0", "text_lora.learning_rate=-1")


def test_negative_eta(capsys, tiny_model_dir, tmp_path):
    train_fails(capsys, tiny_model_dir, tmp_path, "sample.eta must be > 0", "sample.eta=-0.5")


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_timestep_fraction_outside_unit_interval(capsys, tiny_model_dir, tmp_path, fraction):
    message = "ddpo.timestep_fraction must be in (0, 1]"
    train_fails(capsys, tiny_model_dir, tmp_path, message, f"ddpo.timestep_fraction={fraction}")


def test_batch_size_not_dividing_the_epoch(capsys, tiny_model_dir, tmp_path):
    message = "train.batch_size_per_device (3) must divide the samples per epoch"
    train_fails(capsys, tiny_model_dir, tmp_path, message, "train.batch_size_per_device=3")


def test_accumulation_not_dividing_the_micro_batches(capsys, tiny_model_dir, tmp_path):
    message = "train.gradient_accumulation_steps (3) must divide the 4 micro-batches"
    train_fails(capsys, tiny_model_dir, tmp_path, message, "train.gradient_accumulation_steps=3")


def test_nonfinite_fraction_out_of_range(capsys, tiny_model_dir, tmp_path):
    message = "train.max_nonfinite_fraction must be in [0, 1)"
    train_fails(capsys, tiny_model_dir, tmp_path, message, "train.max_nonfinite_fraction=1")


def test_wandb_enabled_but_not_installed(capsys, tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    train_fails(capsys, tiny_model_dir, tmp_path, "log.wandb=true but wandb is not installed", "log.wandb=true")


# ------------------------------------------------------------------ prompts and rewards
def test_missing_prompt_file(capsys, tiny_model_dir, tmp_path):
    missing = tmp_path / "missing.txt"
    message = f"prompts.train: '{missing}' is neither a prompt file nor a built-in set"
    train_fails(capsys, tiny_model_dir, tmp_path, message, f"prompts.train={missing}")


def test_empty_prompt_file(capsys, tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    train_fails(
        capsys,
        tiny_model_dir,
        tmp_path,
        f"prompts.train: prompt file {empty} holds no prompts",
        f"prompts.train={empty}",
    )


def test_undecodable_prompt_file(capsys, tiny_model_dir, tmp_path):
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("un caf\xe9 noir\n".encode("latin-1"))
    train_fails(capsys, tiny_model_dir, tmp_path, "is not UTF-8 text", f"prompts.eval={binary}")


def test_unknown_prompt_set(capsys, tiny_model_dir, tmp_path):
    message = "prompts.train: 'aminals' is neither a prompt file nor a built-in set (animals, color"
    train_fails(capsys, tiny_model_dir, tmp_path, message, "prompts.train=aminals")


def test_unknown_reward(capsys, tiny_model_dir, tmp_path):
    train_fails(capsys, tiny_model_dir, tmp_path, "unknown reward 'jpeg'; valid rewards:", "reward=jpeg")


# ------------------------------------------------------------------ models and adapters
def test_base_model_folder_without_pipeline(capsys, tiny_model_dir, tmp_path):
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    train_fails(capsys, tiny_model_dir, tmp_path, "is not a diffusers pipeline folder", f"model.base={not_a_model}")


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Text-encoder adapters of rank 4 and 8 on the tiny model, and one of rank 4 on a wider model."""
    root = tmp_path_factory.mktemp("adapters")
    other_base = root / "other_base"
    build_tiny_pipeline(seed=1, image_size=32, cross_attention_dim=64).save_pretrained(other_base)
    made = {}
    for name, base, rank in (("r4", tiny_model_dir, 4), ("r8", tiny_model_dir, 8), ("other", other_base, 4)):
        pipe = load_pipeline(str(base))
        add_lora(pipe.text_encoder, LoraConfig(rank=rank, alpha=rank), seed=0)
        with torch.no_grad():  # non-zero B so that a wrong load would matter
            for param_name, param in pipe.text_encoder.named_parameters():
                if "lora_B" in param_name:
                    param.fill_(0.01)
        save_adapters(root / name, pipe.text_encoder, None, str(base))
        made[name] = root / name
    return made


def test_sample_with_an_adapter_of_another_base(capsys, tiny_model_dir, tmp_path, adapters):
    out = tmp_path / "x.png"
    argv = [
        "sample",
        "--model",
        str(tiny_model_dir),
        "--text-lora",
        str(adapters["other"]),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "-o",
        str(out),
    ]
    fails(capsys, argv, "does not fit this CLIPTextModel (another base model?)")
    assert not out.exists()


def test_fuse_adapters_of_different_rank(capsys, tiny_model_dir, tmp_path, adapters):
    out = tmp_path / "fused"
    argv = ["fuse", str(adapters["r4"]), str(adapters["r8"]), "--model", str(tiny_model_dir), "-o", str(out)]
    fails(capsys, argv, "rank")
    assert not out.exists() and not (tmp_path / ".fused.tmp").exists()


def test_fuse_adapters_of_different_base(capsys, tiny_model_dir, tmp_path, adapters):
    out = tmp_path / "fused"
    argv = ["fuse", str(adapters["r4"]), str(adapters["other"]), "--model", str(tiny_model_dir), "-o", str(out)]
    fails(capsys, argv, "another base model?")
    assert not out.exists()


def test_missing_config_file(capsys, tmp_path):
    fails(capsys, ["train", str(tmp_path / "no_such_config.yaml")], "config not found")


def test_sample_output_not_png(capsys, tmp_path):
    fails(capsys, ["sample", "--prompt", "x", "-o", str(tmp_path / "x.jpg")], "must be a .png")


def test_fuse_weights_count(capsys, tmp_path):
    fails(capsys, ["fuse", "a", "b", "--weights", "1", "-o", str(tmp_path / "out")], "2 adapters but 1 weights")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ resume
def test_resume_with_another_config(capsys, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, tiny_overrides(tiny_model_dir, tmp_path)), run / "config.yaml")
    before = sorted(p.name for p in run.iterdir())
    message = "--resume " + str(run) + ": the run was started with another config: ddpo.clip_range (0.2 → 0.5)"
    fails(capsys, ["train", "--resume", str(run), "ddpo.clip_range=0.5"], message)
    assert sorted(p.name for p in run.iterdir()) == before


def test_resume_of_a_folder_that_is_no_run(capsys, tmp_path):
    fails(capsys, ["train", "--resume", str(tmp_path)], "not a run folder (no config.yaml)")
