"""Speed of TexForce's two phases on real Stable Diffusion (random weights), texforce's path against the official
loop's compute pattern in one run; and what the speed options and direct reward backprop cost.

    python -m benchmarks.speed --arch sd15 --sample-batch 32       # on a GPU: SD-1.x, 512², 50 DDIM steps, CFG
    python -m benchmarks.speed --arch sd15 --modes reference,compile   # torch.compile'd U-Net, compile time too
    python -m benchmarks.speed --arch sdxl --sample-batch 8 --train-batch 4   # SDXL, 1024², two text encoders
    python -m benchmarks.speed --arch sd35-medium --modes texforce,backprop --steps 28 --sample-batch 4   # SD3.5
    python -m benchmarks.speed --arch flux-dev --modes texforce,backprop --steps 28 --sample-batch 2      # FLUX.1
    python -m benchmarks.speed --smoke                             # tiny model on the CPU (CI runs this)

Modes (--modes, comma-separated; default reference,texforce,backprop):
  reference      the official pattern: fp32 weights under fp16 autocast, batch 4, the text encoder re-run (with
                 gradients) for every trained timestep
  texforce       frozen weights in bf16, SDPA attention, sampling batch decoupled from the training micro-batch,
                 prompts encoded once per micro-batch
  channels_last  texforce with model.channels_last=true (U-Net and VAE in channels-last memory format)
  compile        texforce with model.compile=true: adds the first calls' extra seconds (the compilation) and the
                 compiled U-Net's relative difference to the plain one on the same input
  backprop       direct reward backprop at K = 1 with gradient checkpointing (world_clipscore as the
                 differentiable reward): images/s, and memory per image (GPU: max_memory_allocated above what was
                 allocated before, over the batch; CPU: the process's peak RSS, all modes so far)

Prints one JSON object per figure as it is measured (and appends them all to --json): sampling images/s and PPO
sample-timesteps/s per mode, each with its ratio to the reference when that ran earlier in the run, peak memory,
the attention kernels that ran (`AttnProcessor2_0` and `sdpa` call torch's scaled_dot_product_attention), the
model options, the device and library versions. Weights are random: compute does not depend on them.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import tempfile
from datetime import date
from pathlib import Path

import diffusers
import torch
import transformers

from benchmarks.timing import append_json_lines, timed_calls
from texforce.bases.loading import attention_kernels, frozen_dtype, resolve_device
from texforce.bases.meta import build_on_device
from texforce.observe.runlog import RunLogger
from texforce.run.run_config import load_config
from texforce.run.trainer import Trainer, epoch_generator
from texforce.sampling import Trajectory, guided_noise_fn, step_with_logprob

PROMPT = "A photo of a hand"
OPTIONS = {  # the texforce modes' model options
    "texforce": [],
    "channels_last": ["model.channels_last=true"],
    "compile": ["model.compile=true"],
}
MODES = ["reference", *OPTIONS, "backprop"]
BACKPROP = [  # DRaFT-1 with checkpointing, on a differentiable reward that reads any prompt
    "train.algorithm=backprop",
    "reward=world_clipscore",
    "backprop.num_grad_steps=1",
    "backprop.gradient_checkpointing=true",
]


def resolution(args: argparse.Namespace) -> list[str]:
    """The `sample.resolution` override of --resolution, if given."""
    return [] if args.resolution is None else [f"sample.resolution={args.resolution}"]


def build_trainer(base: str, steps: int, sample_batch: int, train_batch: int, tmp: str, extra: list[str]) -> Trainer:
    config = load_config(
        None,
        [
            f"model.base={base}",
            f"sample.num_steps={steps}",
            f"sample.batch_size_per_device={sample_batch}",
            "sample.num_batches_per_epoch=1",
            f"train.batch_size_per_device={train_batch}",
            "ddpo.timestep_fraction=0.5",
            f"output_dir={tmp}",
            *extra,
        ],
    )
    trainer = Trainer(config, RunLogger(Path(tmp), 1, 1, quiet=True))
    device = resolve_device(config.model.device)  # on a GPU the random weights are made there, in their dtype
    pipe = build_on_device(base, device, frozen_dtype(config.model.dtype, device)) if device.type == "cuda" else None
    trainer.setup(pipe)
    return trainer


def reference_update(trainer: Trainer, trajectory, rows: torch.Tensor, steps: torch.Tensor) -> None:
    """The official update's compute: fp16 autocast, text encoder re-run (with gradients) for every timestep."""
    c, policy = trainer.config, trainer.policy
    autocast = torch.autocast(trainer.device.type, dtype=torch.float16, enabled=trainer.device.type == "cuda")
    for j in range(steps.shape[1]):
        with autocast:
            embeds = policy.encode(trajectory.prompt_ids[rows])
            negative = policy.encode(policy.negative_ids.expand(len(rows), -1)) if policy.uses_guidance else None
            predict = guided_noise_fn(policy.denoiser, embeds, negative, c.sample.guidance_scale)
            step = steps[:, j]
            latents = trajectory.latents[rows, step].to(trainer.device)
            _, log_probs = step_with_logprob(
                policy.scheduler, predict(latents, trajectory.timesteps[step].to(trainer.device)),
                trajectory.timesteps[step].to(trainer.device), latents, c.sample.eta,
                prev_sample=trajectory.latents[rows, step + 1].to(trainer.device),
            )  # fmt: skip
        log_probs.mean().backward()


@torch.no_grad()
def compiled_difference(trainer: Trainer, trajectory: Trajectory) -> float:
    """‖compiled − plain‖ / ‖plain‖ of one guided U-Net call of the sampling batch (the compiled graph's shape):
    `unet.forward` runs the module eagerly, `unet(...)` the compiled graph."""
    policy, dtype = trainer.policy, trainer.policy.denoiser.dtype
    ids = trajectory.prompt_ids.to(trainer.device)
    kwargs = policy.encode(ids).after(policy.negative_embeds(len(ids))).unet_kwargs(dtype)
    latents = trajectory.latents[:, 0].to(trainer.device, dtype).repeat(2, 1, 1, 1)
    timesteps = trajectory.timesteps[:1].to(trainer.device).expand(len(latents))
    compiled = policy.denoiser(latents, timesteps, **kwargs).sample.float()
    plain = policy.denoiser.forward(latents, timesteps, **kwargs).sample.float()
    return float((compiled - plain).norm() / plain.norm())


def common_fields(mode: str, base: str, trainer: Trainer, args: argparse.Namespace) -> dict:
    device, model = trainer.device, trainer.config.model
    return {
        "mode": mode,
        "model": base,
        "dtype": str(trainer.policy.denoiser.dtype).removeprefix("torch."),
        "options": {"attention": model.attention, "channels_last": model.channels_last, "compile": model.compile},
        "attention_kernels": attention_kernels(trainer.policy.pipe),
        "steps": args.steps,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "date": date.today().isoformat(),
    }


def measure(mode: str, args: argparse.Namespace, base: str, tmp: str) -> list[dict]:
    """Sampling and PPO-update throughput of one mode (reference or a texforce mode)."""
    reference = mode == "reference"
    sample_batch, train_batch = (4, 4) if reference else (args.sample_batch, args.train_batch)
    extra = ["model.dtype=fp32"] if reference else [f"model.dtype={args.dtype}", *OPTIONS[mode]]
    trainer = build_trainer(base, args.steps, sample_batch, train_batch, tmp, [*extra, *resolution(args)])
    device = trainer.device
    prompts = [PROMPT] * sample_batch
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=reference and device.type == "cuda")
    generator = epoch_generator(0, 0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sample():
        with autocast:
            return trainer.policy.sample(prompts, generator)

    sample_first, sample_seconds = timed_calls(sample, device)
    trajectory = sample()
    rows = torch.arange(train_batch) % sample_batch
    steps = torch.stack([torch.randperm(args.steps, generator=generator) for _ in rows])
    steps = steps[:, : trainer.algorithm.num_train_timesteps]
    advantages = torch.randn(sample_batch, generator=generator)
    if reference:
        update_first, update_seconds = timed_calls(lambda: reference_update(trainer, trajectory, rows, steps), device)
    else:
        update_first, update_seconds = timed_calls(
            lambda: trainer.algorithm.train_micro_batch(trajectory, advantages, rows, steps), device
        )
    trainer.optimizer.zero_grad(set_to_none=True)
    common = common_fields(mode, base, trainer, args)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    trained = train_batch * steps.shape[1]
    figures = [
        {"figure": "sampling", "value": sample_batch / sample_seconds, "unit": "images/s", "batch": sample_batch,
         **common},
        {"figure": "ppo_update", "value": trained / update_seconds, "unit": "sample-timesteps/s",
         "batch": train_batch, **common},
        {"figure": "peak_memory", "value": peak, "unit": "GiB", **common},
    ]  # fmt: skip
    if mode == "compile":
        figures += [
            {"figure": "compile_seconds", "value": sample_first - sample_seconds, "unit": "s", "phase": "sampling",
             **common},
            {"figure": "compile_seconds", "value": update_first - update_seconds, "unit": "s", "phase": "ppo_update",
             **common},
            {"figure": "compiled_unet_relative_difference", "value": compiled_difference(trainer, trajectory),
             "unit": "‖compiled − plain‖ / ‖plain‖", **common},
        ]  # fmt: skip
    return figures


def measure_backprop(args: argparse.Namespace, base: str, tmp: str) -> list[dict]:
    """Direct backprop at K = 1 with checkpointing: images/s and memory per image of one micro-batch."""
    batch = args.backprop_batch
    extra = [f"model.dtype={args.dtype}", *BACKPROP, *resolution(args)]
    trainer = build_trainer(base, args.steps, batch, batch, tmp, extra)
    device, prompts = trainer.device, [PROMPT] * batch

    def step() -> None:
        trainer.algorithm.train_micro_batch(prompts, epoch_generator(0, 0), 1, 0)
        trainer.optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    _, seconds = timed_calls(step, device)
    if device.type == "cuda":
        memory = (torch.cuda.max_memory_allocated() - before) / batch / 2**30
        unit = "GiB per image (max_memory_allocated above the weights)"
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        unit = "GiB (peak RSS of the process, all modes so far)"
    common = {**common_fields("backprop", base, trainer, args), "batch": batch, "num_grad_steps": 1,
              "gradient_checkpointing": True}  # fmt: skip
    return [
        {"figure": "backprop_step", "value": batch / seconds, "unit": "images/s", **common},
        {"figure": "backprop_memory", "value": memory, "unit": unit, **common},
    ]


# --arch: the true architecture `texforce/ARCH-random`; with --smoke the tiny model of its family
SMOKE_MODELS = {
    "sd15": "texforce/tiny-random",
    "sd21": "texforce/tiny-random",
    "sdxl": "texforce/tiny-sdxl-random",
    "sd35-medium": "texforce/tiny-sd3-random",
    "sd35-large": "texforce/tiny-sd3-random",
    "flux-dev": "texforce/tiny-flux-random",
    "flux-schnell": "texforce/tiny-flux-random",
}
FLOW_ARCHS = ("sd35-medium", "sd35-large", "flux-dev", "flux-schnell")  # transformers: no compile-difference check


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.speed`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=list(SMOKE_MODELS), default="sd15")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 4 steps: checks the harness, not speed")
    parser.add_argument("--modes", default="reference,texforce,backprop", help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="model.dtype (fp16 cannot train)")
    parser.add_argument("--sample-batch", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--backprop-batch", type=int, default=4)
    parser.add_argument("--resolution", type=int, help="image size in pixels; unset: the model's native size")
    parser.add_argument("--json", help="append the figures to this JSON-lines file")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    if "compile" in modes and args.arch in FLOW_ARCHS:
        parser.error("the compile mode compares U-Net calls; run it with --arch sd15, sd21 or sdxl")
    if args.smoke:
        args.steps, args.sample_batch, args.train_batch, args.backprop_batch = 4, 4, 2, 2
        if args.arch in FLOW_ARCHS and args.resolution is None:  # the tiny models' size; FLUX's own default is 1024
            args.resolution = 64
    base = SMOKE_MODELS[args.arch] if args.smoke else f"texforce/{args.arch}-random"
    figures, reference = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            measured = measure_backprop(args, base, tmp) if mode == "backprop" else measure(mode, args, base, tmp)
            for figure in measured:
                if mode == "reference":
                    reference[figure["figure"]] = figure["value"]
                elif figure["value"] and reference.get(figure["figure"]):
                    figure["ratio_to_reference"] = figure["value"] / reference[figure["figure"]]
                print(json.dumps(figure), flush=True)
            figures += measured
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    append_json_lines(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
