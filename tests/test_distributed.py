"""Two processes (torchrun, gloo on the CPU) make the same update and the same evaluation as one process with the
same global batch, a two-process run killed mid-update resumes under two processes, a finished run resumes (only its
after-evaluation and export) without hanging, and each process ends with its process group destroyed. The exchange
of latents sends each process exactly the (sample, step) pairs it asks for."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_overrides
from PIL import Image
from safetensors.torch import load_file

from texforce.run.train import train_run
from texforce.training.distributed import exchange_latents

TOLERANCE = 1e-3  # a tenth of one AdamW step at lr 1e-2; a wrong split or a missing all-reduce moves weights by ~lr.
# Measured on torch 2.13: 2.2e-4 (text encoder k_proj lora_B: softmax is blind to part of a key's change, so that
# gradient is float noise that AdamW scales up to lr-sized steps), 3e-5 (U-Net), after 2 epochs
EVAL = {"eval__num_prompts": 3, "eval__num_seeds": 1}  # 3 images per split: process 0 renders 2 of them, process 1 one
AFTER_RUN = "process group initialised after the run:"
LAUNCHER = f"""import os, sys
import torch.distributed as dist
from texforce.cli.main import main
code = main(sys.argv[1:])
os.write(2, f"{AFTER_RUN} {{dist.is_initialized()}}\\n".encode())  # one write: the two processes' lines stay whole
sys.exit(code)
"""


def torchrun(args: list[str], env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    """`texforce train ARGS` in two processes; each says on stderr whether its process group outlived the run. The
    timeout guards against a hang, it checks no speed: a run takes seconds alone, many minutes on a busy machine."""
    launcher = tmp_path / "launch_texforce.py"
    launcher.write_text(LAUNCHER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(launcher)]
    return subprocess.run([*command, "train", "--quiet", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=1200)  # fmt: skip


def destroyed(result: subprocess.CompletedProcess) -> bool:
    """Both processes ended their run with the process group destroyed."""
    return result.stderr.count(f"{AFTER_RUN} False") == 2


def eval_scores(run) -> dict:
    return json.loads((run / "eval.json").read_text())["scores"]


def test_two_processes_equal_one_and_resume(tiny_model_dir, tmp_path):
    extra = {"unet_lora__use": True, "advantage__mode": "per_prompt", "advantage__min_count": 2, **EVAL}
    # one process: 2 sample batches and 2 accumulated micro-batches per optimizer step
    one = train_run(None, tiny_overrides(tiny_model_dir, tmp_path, run_name="one", **extra), quiet=True)
    # two processes: 1 batch and 1 micro-batch each — the same 8 samples per epoch and 4 per optimizer step
    two = tiny_overrides(tiny_model_dir, tmp_path, run_name="two", sample__num_batches_per_epoch=1,
                         train__gradient_accumulation_steps=1, **extra)  # fmt: skip
    defaults = tmp_path / "defaults.yaml"  # the dataclass defaults, as train_run(None, …) uses, not default.yaml
    defaults.write_text("{}\n")
    # both processes die after epoch 2's first optimizer step
    killed = torchrun([str(defaults), *two], {"TEXFORCE_TEST_KILL_AT": "update:2"}, tmp_path)
    assert killed.returncode != 0 and not (tmp_path / "two" / "lora").exists(), killed.stderr[-2000:]
    resumed = torchrun(["--resume", str(tmp_path / "two")], {}, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip() == str(tmp_path / "two")  # printed once, by the main process
    assert destroyed(resumed), resumed.stderr[-3000:]

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

    # the evaluation, sharded over the two processes, judges the same images as one process's: the JPEG size in kB
    # may differ by a byte or two (another batch shape, float noise in the pixels; measured: 1e-3 on 1 of 12 images)
    scores = eval_scores(tmp_path / "two")
    assert scores.keys() == eval_scores(one).keys() == {"before", "after"}
    for when in ("before", "after"):
        for split, values in eval_scores(one)[when].items():
            assert len(values[0]) == 3
            torch.testing.assert_close(scores[when][split], values, atol=2e-3, rtol=0)
            grids = [Image.open(run / "samples" / f"eval_{when}_{split}.png") for run in (one, tmp_path / "two")]
            assert grids[0].size == grids[1].size  # all three images gathered onto the main process's grid
    # a finished run resumed: no training left, every process renders its share of the after-evaluation again
    (tmp_path / "two" / "lora").rename(tmp_path / "lora_first")
    finished = torchrun(["--resume", str(tmp_path / "two")], {}, tmp_path)
    assert finished.returncode == 0 and destroyed(finished), finished.stderr[-3000:]
    assert eval_scores(tmp_path / "two") == scores and (tmp_path / "two" / "lora").is_dir()


def test_backprop_two_processes_equal_one(tiny_model_dir, tmp_path):
    """Direct backprop: each process samples and back-propagates its micro-batches of every optimizer step."""
    extra = {"train__algorithm": "backprop", "reward": "world_clipscore", "sample__eta": 0.0, "unet_lora__use": True}
    one = train_run(None, tiny_overrides(tiny_model_dir, tmp_path, run_name="one", **extra), quiet=True)
    two = tiny_overrides(tiny_model_dir, tmp_path, run_name="two", sample__num_batches_per_epoch=1,
                         train__gradient_accumulation_steps=1, **extra)  # fmt: skip
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("{}\n")
    result = torchrun([str(defaults), *two], {}, tmp_path)
    assert result.returncode == 0 and destroyed(result), result.stderr[-3000:]
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


def exchange_in(rank: int, rendezvous: str, latents: torch.Tensor, wanted: torch.Tensor) -> None:
    """One of two processes: exchange this process's half of `latents` and check what it got, bit for bit."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        state = SimpleNamespace(process_index=rank, num_processes=2, device=torch.device("cpu"))
        n = len(latents) // 2
        got = exchange_latents(state, latents[rank * n : (rank + 1) * n], wanted)
        assert got.values.dtype == latents.dtype and torch.equal(got.values, latents[wanted[rank]])
        rows, steps = wanted[rank].nonzero(as_tuple=True)
        assert torch.equal(got[rows, steps], latents[rows, steps])  # read as the dense latents are
        missing = (~wanted[rank]).nonzero()[0]
        with pytest.raises(IndexError):
            got[missing[:1], missing[1:]]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exchange_sends_each_process_what_it_wants(tmp_path, dtype):
    """All 6 chains (5 latents each) exist only as two halves; each process asks for its own random pairs, some
    of them held by the other process, and gets exactly those, in (sample, step) order."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((6, 5, 2, 3, 3), generator=generator).to(dtype)
    wanted = torch.rand((2, 6, 5), generator=generator) < 0.4
    mp.spawn(exchange_in, args=(str(tmp_path / "rendezvous"), latents, wanted), nprocs=2)
