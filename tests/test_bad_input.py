"""Bad input, one case per test: a one-line `texforce VERB: error: …`, exit code 2, no traceback, nothing written.

The CLI runs in-process (`main(argv)`); `test_cli.py` checks the same contract through real subprocesses.
"""

import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from PIL import Image

from texforce.adapters.files import save_adapters
from texforce.bases.loading import add_lora, load_pipeline
from texforce.bases.sd import build_tiny_pipeline
from texforce.cli.main import main
from texforce.config import LoraConfig
from texforce.run.run_config import load_config, save_config
from texforce.run.train import run_lock


def fails(capsys, argv: list[str], message: str) -> str:
    """Run the CLI; assert exit code 2 and that stderr is exactly one error line containing `message`."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("texforce ") and ": error: " in lines[0], err
    assert message in lines[0], err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Make loading a model fail the test: the error must come before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr("texforce.bases.loading.prepare_pipeline", refuse)


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
    train_fails(capsys, tiny_model_dir, tmp_path, "sample.eta must be > 0 for DDPO", "sample.eta=0")


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


def test_training_in_fp16(capsys, tiny_model_dir, tmp_path):
    train_fails(capsys, tiny_model_dir, tmp_path, "model.dtype=fp16 cannot train", "model.dtype=fp16")


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


def test_non_world_prompts_with_a_world_reward(capsys, tiny_model_dir, tmp_path):
    """Was: found only after a whole sampling epoch, leaving config.yaml and an empty eval.json behind."""
    prompts = tmp_path / "animals.txt"
    prompts.write_text("two red circles\na photo of a cat\n")
    message = (
        "prompts.train: reward world_alignment cannot score 1 of the 2 prompts, e.g. 'a photo of a cat'; it reads "
        "only world prompts such as 'a red circle'"
    )
    train_fails(capsys, tiny_model_dir, tmp_path, message, f"prompts.train={prompts}", "reward=world_alignment")


def test_non_world_prompts_with_a_world_judge(capsys, tiny_model_dir, tmp_path):
    message = "prompts.train: reward world_alignment cannot score 45 of the 45 prompts, e.g. 'A photo of a cat'"
    train_fails(capsys, tiny_model_dir, tmp_path, message, "eval.reward=world_alignment")  # animals


def test_sample_a_non_world_prompt_with_the_world_reward(capsys, tmp_path, no_model):
    message = "reward world_score cannot score 1 of the 1 prompts, e.g. 'a photo of a hand'"
    line = fails(capsys, ["sample", "--prompt", "a photo of a hand", "-o", str(tmp_path / "hand.png")], message)
    assert line.endswith("; --reward none samples them unscored")


def test_eval_non_world_prompts_with_the_world_reward(capsys, tmp_path, no_model):
    argv = ["eval", "--prompts", "animals", "--reward", "world_preference", "-o", str(tmp_path / "eval")]
    fails(capsys, argv, "the eval prompts: reward world_preference cannot score 9 of the 9 prompts")


def test_score_a_non_world_prompt_with_the_world_reward(capsys, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(image)
    fails(capsys, ["score", str(image), "--prompt", "a cat"], "--prompt: reward world_score cannot score")


def test_world_rewards_judge_the_world_models_image_size():
    from texforce.rewards import image_size
    from texforce.world.scenes import IMAGE_SIZE

    assert image_size("jpeg_compressibility:1+world_preference:0.5") == IMAGE_SIZE and image_size("clipscore") is None


def test_score_a_grid_with_a_world_reward(capsys, tmp_path):
    """Was: a grid scored 0.0 without a word (the reward judges single 64×64 images)."""
    grid = tmp_path / "grid.png"
    Image.new("RGB", (256, 300)).save(grid)
    message = f"{grid} is 256×300, not square: world_score judges single 64×64 images (a grid? score the images"
    fails(capsys, ["score", str(grid), "--prompt", "two red circles"], message)


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
        save_adapters(root / name, {"text_encoder": pipe.text_encoder}, str(base))
        made[name] = root / name
    return made


def misfit(adapter: Path, base: Path) -> str:
    """The one line naming the base the `other` adapter was trained on, the one it was given, and torch's cause."""
    return (
        f"adapter {adapter / 'text_encoder'} was trained on {adapter.parent / 'other_base'} and does not fit the "
        f"CLIPTextModel of the given base {base}: size mismatch for "
    )


def test_sample_with_an_adapter_of_another_base(capsys, tiny_model_dir, tmp_path, adapters):
    out = tmp_path / "x.png"
    argv = ["sample", "--model", str(tiny_model_dir), "--text-lora", str(adapters["other"]), "--prompt", "a cat"]
    fails(capsys, [*argv, "--steps", "2", "-o", str(out)], misfit(adapters["other"], tiny_model_dir))
    assert not out.exists()


def test_eval_with_an_adapter_of_another_base_fails_before_rendering(
    capsys, tiny_model_dir, tmp_path, adapters, monkeypatch
):
    """Was: the base configuration rendered for 14 minutes, then the adapter failed with its cause cut off."""

    def refuse(*args, **kwargs):
        raise AssertionError("rendered before the adapters were checked")

    monkeypatch.setattr("texforce.observe.evaluation.render", refuse)
    configs = ["--config", "base", "--config", f"text={adapters['r4']}", "--config", f"text={adapters['other']}"]
    argv = ["eval", "--model", str(tiny_model_dir), *configs, "-o", str(tmp_path / "eval")]
    fails(capsys, argv, misfit(adapters["other"], tiny_model_dir))
    assert not (tmp_path / "eval").exists()


def test_sample_with_a_missing_adapter(capsys, tmp_path, no_model):
    """Was the README's `--text-lora runs/X/text_encoder_lora`: runs write their adapters to RUN/lora."""
    missing = tmp_path / "text_encoder_lora"
    argv = ["sample", "--text-lora", str(missing), "--prompt", "two red circles", "-o", str(tmp_path / "x.png")]
    fails(capsys, argv, f"--text-lora {missing}: adapter not found (a run's final adapters are in RUN/lora)")


@pytest.mark.parametrize(
    "verb",
    [
        ["sample", "--prompt", "two red circles", "--output", "{blocked}/x.png"],
        ["eval", "--output", "{blocked}/eval"],
        ["fuse", "{adapter}", "--output", "{blocked}/fused"],
        ["score", "{image}", "--prompt", "two red circles", "--csv", "{blocked}/scores.csv"],
    ],
    ids=["sample", "eval", "fuse", "score"],
)
def test_output_into_an_unwritable_folder(capsys, tmp_path, adapters, no_model, verb):
    """Was: `sample` raised OSError with a traceback after 116 s of sampling."""
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(image)
    argv = [a.format(blocked=blocked, adapter=adapters["r4"], image=image) for a in verb]
    what = "the eval output" if verb[0] == "eval" else argv[-2]
    fails(capsys, argv, f"cannot write to {what} {argv[-1]}: {blocked} is not a folder")


def test_fuse_adapters_of_different_rank(capsys, tiny_model_dir, tmp_path, adapters):
    out = tmp_path / "fused"
    argv = ["fuse", str(adapters["r4"]), str(adapters["r8"]), "--model", str(tiny_model_dir), "-o", str(out)]
    fails(capsys, argv, "rank")
    assert not out.exists() and not (tmp_path / ".fused.tmp").exists()


def test_fuse_adapters_of_different_base(capsys, tiny_model_dir, tmp_path, adapters):
    out = tmp_path / "fused"
    argv = ["fuse", str(adapters["r4"]), str(adapters["other"]), "-o", str(out)]  # the base: the first adapter's
    fails(capsys, argv, misfit(adapters["other"], tiny_model_dir))
    assert not out.exists()


def test_missing_config_file(capsys, tmp_path):
    fails(capsys, ["train", str(tmp_path / "no_such_config.yaml")], "config not found")


def test_shipped_config_given_as_a_path(capsys):
    """Was the `--help` example `texforce train configs/sd15_jpeg.yaml`."""
    message = "config not found: configs/sd15_jpeg.yaml is not a file; the shipped config is named sd15_jpeg"
    fails(capsys, ["train", "configs/sd15_jpeg.yaml"], message)


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


def test_resume_of_a_run_another_process_trains_in(capsys, tiny_model_dir, tmp_path, monkeypatch):
    """Was: a resumed run beside a still-running one duplicated epochs in metrics.jsonl."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, tiny_overrides(tiny_model_dir, tmp_path)), run / "config.yaml")
    monkeypatch.setattr("texforce.run.trainer.Policy", lambda *a: pytest.fail("a model was loaded before the error"))
    with run_lock(run):  # as the other process holds it
        owner = (run / ".lock").read_text().strip()
        message = f"run folder {run} is in use by {owner}, which is training in it; wait for it to end or stop it"
        fails(capsys, ["train", "--resume", str(run)], message)
    assert owner.startswith(f"process {os.getpid()} on ")
