"""Speed of TexForce's two phases, texforce's path against the official loop's compute pattern, in one run.

    python -m benchmarks.speed --arch sd15 --sample-batch 64       # on a GPU: SD-1.x, 512², random weights
    python -m benchmarks.speed --arch sdxl --sample-batch 8 --train-batch 4   # SDXL, 1024², two text encoders
    python -m benchmarks.speed --smoke                             # tiny model on the CPU (CI runs this)
    python -m benchmarks.speed --smoke --arch sdxl                 # tiny SDXL on the CPU

Prints one JSON object per figure (and appends them to --json): sampling images/s and PPO sample-timesteps/s
for `texforce` (frozen weights in bf16, sampling batch decoupled from the training micro-batch, prompts encoded
once per micro-batch) and `reference` (the official pattern: fp32 weights under fp16 autocast, batch 4, the text
encoder re-run for every trained timestep), each texforce figure with its ratio to the reference, the GPU name,
peak memory and library versions. Weights are random: compute does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import date
from pathlib import Path

import diffusers
import torch
import transformers

from benchmarks.timing import seconds_per_call
from texforce.config import load_config
from texforce.runlog import RunLogger
from texforce.sampling import ddim_step_with_logprob, guided_noise_fn
from texforce.trainer import Trainer, epoch_generator


def build_trainer(base: str, dtype: str, steps: int, sample_batch: int, train_batch: int, tmp: str) -> Trainer:
    config = load_config(
        None,
        [
            f"model.base={base}",
            f"model.dtype={dtype}",
            f"sample.num_steps={steps}",
            f"sample.batch_size_per_device={sample_batch}",
            "sample.num_batches_per_epoch=1",
            f"train.batch_size_per_device={train_batch}",
            "ddpo.timestep_fraction=0.5",
            f"output_dir={tmp}",
        ],
    )
    trainer = Trainer(config, RunLogger(Path(tmp), 1, 1, quiet=True))
    trainer.setup()
    return trainer


def reference_update(trainer: Trainer, trajectory, rows: torch.Tensor, steps: torch.Tensor) -> None:
    """The official update's compute: fp16 autocast, text encoder re-run (with gradients) for every timestep."""
    c, policy = trainer.config, trainer.policy
    autocast = torch.autocast(trainer.device.type, dtype=torch.float16, enabled=trainer.device.type == "cuda")
    for j in range(steps.shape[1]):
        with autocast:
            embeds = policy.encode(trajectory.prompt_ids[rows])
            negative = policy.encode(policy.negative_ids.expand(len(rows), -1))
            predict = guided_noise_fn(policy.unet, embeds, negative, c.sample.guidance_scale)
            step = steps[:, j]
            latents = trajectory.latents[rows, step].to(trainer.device)
            _, log_probs = ddim_step_with_logprob(
                policy.scheduler, predict(latents, trajectory.timesteps[step].to(trainer.device)),
                trajectory.timesteps[step].to(trainer.device), latents, c.sample.eta,
                prev_sample=trajectory.latents[rows, step + 1].to(trainer.device),
            )  # fmt: skip
        log_probs.mean().backward()


def measure(mode: str, args: argparse.Namespace, tmp: str) -> list[dict]:
    base = f"texforce/{args.arch}-random"
    if args.smoke:
        base = "texforce/tiny-sdxl-random" if args.arch == "sdxl" else "texforce/tiny-random"
    dtype = "fp32" if mode == "reference" else args.dtype
    sample_batch = 4 if mode == "reference" else args.sample_batch
    train_batch = 4 if mode == "reference" else args.train_batch
    trainer = build_trainer(base, dtype, args.steps, sample_batch, train_batch, tmp)
    device = trainer.device
    prompts = ["A photo of a hand"] * sample_batch
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=mode == "reference" and device.type == "cuda")
    generator = epoch_generator(0, 0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sample():
        with autocast:
            return trainer.policy.sample(prompts, generator)

    sample_seconds = seconds_per_call(sample, device)
    trajectory = sample()
    rows = torch.arange(train_batch) % sample_batch
    steps = torch.stack([torch.randperm(args.steps, generator=generator) for _ in rows])
    steps = steps[:, : trainer.config.num_train_timesteps]
    advantages = torch.randn(sample_batch, generator=generator)
    if mode == "reference":
        update_seconds = seconds_per_call(lambda: reference_update(trainer, trajectory, rows, steps), device)
    else:
        update_seconds = seconds_per_call(
            lambda: trainer.algorithm.train_micro_batch(trajectory, advantages, rows, steps), device
        )
    trainer.optimizer.zero_grad(set_to_none=True)
    common = {
        "mode": mode,
        "model": base,
        "dtype": str(trainer.policy.unet.dtype).removeprefix("torch."),
        "steps": args.steps,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "date": date.today().isoformat(),
    }
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    trained = train_batch * steps.shape[1]
    return [
        {"figure": "sampling", "value": sample_batch / sample_seconds, "unit": "images/s", "batch": sample_batch,
         **common},
        {"figure": "ppo_update", "value": trained / update_seconds, "unit": "sample-timesteps/s",
         "batch": train_batch, **common},
        {"figure": "peak_memory", "value": peak, "unit": "GiB", **common},
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["sd15", "sd21", "sdxl"], default="sd15")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 4 steps: checks the harness, not speed")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--sample-batch", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--json", help="append the figures to this JSON-lines file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.sample_batch, args.train_batch = 4, 4, 2
    with tempfile.TemporaryDirectory() as tmp:
        reference = measure("reference", args, tmp)
        ours = measure("texforce", args, tmp)
    for mine, theirs in zip(ours, reference, strict=True):
        if mine["value"] and theirs["value"]:
            mine["ratio_to_reference"] = mine["value"] / theirs["value"]
    figures = reference + ours
    for figure in figures:
        print(json.dumps(figure))
    if args.json:
        with open(args.json, "a") as handle:
            handle.writelines(json.dumps(f) + "\n" for f in figures)
    return figures


if __name__ == "__main__":
    main()
