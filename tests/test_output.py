"""Quiet, readable output: no library chatter unless --verbose, whole epoch lines in a log file, and a run that ends
with a verdict a person can read."""

import re
import subprocess
import sys

import pytest
import torch
from conftest import tiny_overrides

from texforce.adapters.files import save_adapters
from texforce.bases.loading import add_lora, load_pipeline
from texforce.cli.main import main
from texforce.config import LoraConfig


@pytest.fixture(scope="module")
def two_adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("chatter")
    for name in ("a", "b"):
        pipe = load_pipeline(str(tiny_model_dir))
        add_lora(pipe.text_encoder, LoraConfig(rank=4, alpha=4), seed=0)
        save_adapters(root / name, {"text_encoder": pipe.text_encoder}, str(tiny_model_dir))
    return root


def fuse(root, out: str, *flags: str) -> subprocess.CompletedProcess:
    """`texforce fuse` in a real process: it loads a saved pipeline (diffusers' and transformers' loading bars,
    transformers' torchvision note) and a second adapter onto one model (peft's multiple-adapters warning)."""
    argv = [sys.executable, "-m", "texforce", *flags, "fuse", str(root / "a"), str(root / "b"), "-o", str(root / out)]
    return subprocess.run(argv, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})


def test_no_library_chatter_by_default(two_adapters):
    result = fuse(two_adapters, "quiet")
    assert result.returncode == 0 and result.stdout == f"{two_adapters / 'quiet'}\n"
    assert result.stderr == ""


def test_verbose_shows_the_library_chatter(two_adapters):
    result = fuse(two_adapters, "verbose", "--verbose")
    assert result.returncode == 0, result.stderr
    assert "Loading pipeline components" in result.stderr and "Make sure to know what you are doing" in result.stderr


def test_epoch_lines_are_whole_in_a_log_and_the_run_ends_with_a_verdict(tiny_model_dir, tmp_path, capsys):
    """stderr is not a terminal here, as when it goes to a file: each epoch line stays one line (was: wrapped at
    80 columns)."""
    assert main(["train", *tiny_overrides(tiny_model_dir, tmp_path)]) == 0
    lines = capsys.readouterr().err.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(re.search(r"  lr \S+  \[sample [\d.]+s · reward .*s\]$", e) for e in epochs)
    assert any(len(line) > 80 for line in epochs)
    run = tmp_path / "run"
    number = r"-?\d+\.\d{4}"
    verdict = r"(it rose|it fell|no clear change at this sample size)"
    for split, count in (("training", 2), ("held-out", 2)):
        pattern = (
            rf"{split} prompts \({count} × 1 seeds\): jpeg_compressibility {number} → {number}, "
            rf"change [+-]\d+\.\d{{4}} ± \d+\.\d{{4}} \(95% interval\): {verdict}"
        )
        assert any(re.fullmatch(pattern, line) for line in lines), lines
    assert lines[-1] == f"run folder {run} · HTML report: texforce report {run}"


def test_captioned_epoch_grid_scores_are_the_epochs_rewards(tiny_model_dir, tmp_path):
    """The epoch grid's captions are the rewards logged for those samples (same order as the prompts)."""
    import json

    from PIL import Image

    assert main(["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path, train__num_epochs=1)]) == 0
    run = tmp_path / "run"
    captions = Image.open(run / "samples" / "epoch_00001.png").text["Description"].splitlines()
    scores = torch.tensor([float(c.split(" · ")[0]) for c in captions])
    record = json.loads((run / "metrics.jsonl").read_text())
    assert len(captions) == 8 and abs(scores.mean().item() - record["reward_mean"]) < 1e-3


def test_the_run_judges_held_out_prompts_in_each_style_of_eval_styles(tiny_model_dir, tmp_path, capsys):
    """A style is judged on the same held-out prompts and seeds, against the plain prompt, on a line of its own."""
    import json

    styles = "[plain, '{prompt}, highly detailed']"
    assert main(["train", *tiny_overrides(tiny_model_dir, tmp_path), f"eval.styles={styles}"]) == 0
    lines = capsys.readouterr().err.splitlines()
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    styled = "heldout@{prompt}, highly detailed"
    assert list(record["change"]) == ["train", "heldout", styled]
    assert record["scores"]["after"][styled] != record["scores"]["after"]["heldout"]  # the model saw other text
    pattern = r"held-out prompts written \{prompt\}, highly detailed \(2 × 1 seeds\): jpeg_compressibility .*"
    assert any(re.fullmatch(pattern, line) for line in lines), lines
    assert (tmp_path / "run" / "samples" / "eval_after_heldout_prompt_highly_detailed.png").is_file()


def test_fuse_keeps_fp32_adapters_of_a_bf16_base(tiny_model_dir, tmp_path):
    """`fuse` builds the base on the meta device; a base saved in bf16 must not round the adapters through bf16."""
    from safetensors.torch import load_file

    from texforce.adapters.files import fuse_adapter_files

    base = tmp_path / "bf16"
    load_pipeline(str(tiny_model_dir)).to(dtype=torch.bfloat16).save_pretrained(base)
    adapters = []
    for seed in (0, 1):
        pipe = load_pipeline(str(tiny_model_dir))
        add_lora(pipe.text_encoder, LoraConfig(rank=4, alpha=4), seed=seed)
        with torch.no_grad():
            for name, param in pipe.text_encoder.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
        save_adapters(tmp_path / f"a{seed}", {"text_encoder": pipe.text_encoder}, str(base))
        adapters.append(tmp_path / f"a{seed}")
    fused = load_file(
        fuse_adapter_files(str(base), adapters, [0.5, 0.5], tmp_path / "fused") / "pytorch_lora_weights.safetensors"
    )
    assert fused and all(t.dtype == torch.float32 for t in fused.values())
    assert any(not torch.equal(t, t.to(torch.bfloat16).float()) for t in fused.values())  # not rounded through bf16
