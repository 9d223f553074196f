"""Rendering at stock speed: texforce's renderer (`texforce sample` and `texforce eval`) against one stock diffusers
`StableDiffusionPipeline` call on the same batch, in one process, on this machine.

    nice -n 10 python -m benchmarks.render_speed                  # the world: 32 images, DDIM 20 steps, CFG 5
    python -m benchmarks.render_speed --threads 2 --repeats 5
    python -m benchmarks.render_speed --smoke                     # tiny model, seconds: checks the harness

Both pipelines load the same folder (the world's shipped model by default). The stock one is diffusers' own:
`from_pretrained`, a `DDIMScheduler` from its scheduler config, one call with `num_images_per_prompt` and a list of
per-image generators. texforce's is `bases.loading.prepare_pipeline` with `bases.rendering.render_images` in the
base's default batch size (the world: all at once), as `texforce sample --prompt P -n 32 --steps 20
--guidance-scale 5` renders. Model loading is left out. After one warm-up call each, the two take turns (either
first) for --repeats paired calls; the ratio is of their medians (≤ 1.1 is the goal). The images' largest difference
is reported too. Prints one JSON object (and appends it to --json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from benchmarks.timing import append_json_lines, seconds_of_one_call
from texforce.bases.loading import WORLD, frozen_dtype, prepare_pipeline, resolve_device
from texforce.bases.rendering import render_images
from texforce.bases.sd import build_tiny_pipeline
from texforce.config import ModelConfig
from texforce.experiments.harness import machine
from texforce.run.defaults import defaults_for


def stock_pipeline(folder: Path, device: torch.device) -> StableDiffusionPipeline:
    """The folder's pipeline as diffusers' documentation loads it, with DDIM and no progress bar."""
    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder), dtype=frozen_dtype("bf16", device), safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def measure(folder: Path, base: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Seconds of the stock call and of texforce's render of the same images; their ratio and difference."""
    seeds = list(range(args.num_images))
    stock = stock_pipeline(folder, device)
    ours = prepare_pipeline(ModelConfig(base=base), device)
    batch_size = defaults_for(base).batch_size

    def stock_call() -> torch.Tensor:
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        return (
            stock(
                args.prompt,
                num_images_per_prompt=args.num_images,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                generator=generators,
                output_type="pt",
            )
            .images.float()
            .cpu()
        )

    def texforce_call() -> torch.Tensor:
        return render_images(ours, [args.prompt] * args.num_images, seeds, batch_size, args.steps, args.guidance_scale)

    difference = (stock_call() - texforce_call()).abs().max().item()  # also the warm-up of each
    times: dict[str, list[float]] = {"stock": [], "texforce": []}
    calls = {"stock": stock_call, "texforce": texforce_call}
    for repeat in range(args.repeats):  # paired, in turns: a slow spell of the machine hits both, neither always first
        for name in sorted(calls, reverse=repeat % 2 == 1):
            times[name].append(seconds_of_one_call(calls[name], device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "model": base,
        "num_images": args.num_images,
        "num_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "texforce_batch_size": batch_size or args.num_images,
        "seconds": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "median_seconds": {name: round(v, 3) for name, v in medians.items()},
        "ratio": round(medians["texforce"] / medians["stock"], 3),
        "max_abs_difference": difference,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "machine": machine(),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.render_speed`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="two red circles")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="paired timed calls of each (after one warm-up)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. the cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 steps, 4 images: the harness")
    parser.add_argument("--json", help="append the result to this JSON-lines file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.num_images, args.steps, args.repeats) < 1:
        parser.error("--num-images, --steps and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.steps, args.num_images, args.repeats = 2, 4, 1
            folder = Path(tmp) / "tiny"
            build_tiny_pipeline(image_size=32).save_pretrained(folder)
            result = measure(folder, str(folder), args, device)
        else:
            from texforce.world import MODEL_DIR

            result = measure(MODEL_DIR, WORLD, args, device)
    print(json.dumps(result), flush=True)
    append_json_lines(args.json, [result])
    return result


if __name__ == "__main__":
    main()
