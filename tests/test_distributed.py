"""Two processes (torchrun, gloo on the CPU) make the same update as one process with the same global batch,
and a two-process run killed mid-update resumes under two processes."""

import json
import os
import subprocess
import sys

import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from texforce.run.train import train_run

TOLERANCE = 1e-3  # a tenth of one AdamW step at lr 1e-2; a wrong split or a missing all-reduce moves weights by ~lr.
# Measured on torch 2.13: 2.2e-4 (text encoder k_proj lora_B: softmax is blind to part of a key's change, so that
# gradient is float noise that AdamW scales up to lr-sized steps), 3e-5 (U-Net), after 2 epochs


def torchrun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run([*command, "-m", "texforce", "train", "--quiet", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=300)  # fmt: skip


def test_two_processes_equal_one_and_resume(tiny_model_dir, tmp_path):
    extra = {"unet_lora__use": True, "advantage__mode": "per_prompt", "advantage__min_count": 2}
    # one process: 2 sample batches and 2 accumulated micro-batches per optimizer step
    one = train_run(None, tiny_overrides(tiny_model_dir, tmp_path, run_name="one", **extra), quiet=True)
    # two processes: 1 batch and 1 micro-batch each — the same 8 samples per epoch and 4 per optimizer step
    two = tiny_overrides(tiny_model_dir, tmp_path, run_name="two", sample__num_batches_per_epoch=1,
                         train__gradient_accumulation_steps=1, **extra)  # fmt: skip
    defaults = tmp_path / "defaults.yaml"  # the dataclass defaults, as train_run(None, …) uses, not default.yaml
    defaults.write_text("{}\n")
    # both processes die after epoch 2's first optimizer step
    killed = torchrun([str(defaults), *two], {"TEXFORCE_TEST_KILL_AT": "update:2"})
    assert killed.returncode != 0 and not (tmp_path / "two" / "lora").exists(), killed.stderr[-2000:]
    resumed = torchrun(["--resume", str(tmp_path / "two")], {})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip() == str(tmp_path / "two")  # printed once, by the main process

    for part in ("text_encoder", "unet"):
        a = load_file(one / "lora" / part / "adapter_model.safetensors")
        b = load_file(tmp_path / "two" / "lora" / part / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst <= TOLERANCE, (part, worst)
        moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)  # B starts at 0
        assert moved > 5 * max(worst, 1e-4), (part, moved)  # the update is far above the mismatch
        print(f"{part}: max |1 process - 2 processes| = {worst:.2e}; max |B| = {moved:.2e}")

    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (one, tmp_path / "two")]  # fmt: skip
    assert [r["epoch"] for r in rows[1]] == [1, 2]
    assert rows[0][0]["reward_mean"] == rows[1][0]["reward_mean"]  # epoch 1 samples are bit-identical
    for a, b in zip(*rows, strict=True):
        torch.testing.assert_close(a["reward_mean"], b["reward_mean"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["ppo/grad_norm"], b["ppo/grad_norm"], atol=0, rtol=1e-4)


def test_backprop_two_processes_equal_one(tiny_model_dir, tmp_path):
    """Direct backprop: each process samples and back-propagates its micro-batches of every optimizer step."""
    extra = {"train__algorithm": "backprop", "reward": "world_clipscore", "sample__eta": 0.0, "unet_lora__use": True}
    one = train_run(None, tiny_overrides(tiny_model_dir, tmp_path, run_name="one", **extra), quiet=True)
    two = tiny_overrides(tiny_model_dir, tmp_path, run_name="two", sample__num_batches_per_epoch=1,
                         train__gradient_accumulation_steps=1, **extra)  # fmt: skip
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("{}\n")
    result = torchrun([str(defaults), *two], {})
    assert result.returncode == 0, result.stderr[-3000:]
    for part in ("text_encoder", "unet"):
        a = load_file(one / "lora" / part / "adapter_model.safetensors")
        b = load_file(tmp_path / "two" / "lora" / part / "adapter_model.safetensors")
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)
        assert worst <= TOLERANCE and moved > 5 * max(worst, 1e-4), (part, worst, moved)
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (one, tmp_path / "two")]  # fmt: skip
    # epoch 1's images are bit-identical (gathered in another order: the mean may differ in the last bits)
    torch.testing.assert_close(rows[0][0]["reward_mean"], rows[1][0]["reward_mean"], atol=1e-6, rtol=0)
    for a, b in zip(*rows, strict=True):
        torch.testing.assert_close(a["reward_mean"], b["reward_mean"], atol=1e-4, rtol=0)
