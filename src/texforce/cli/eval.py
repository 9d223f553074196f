"""`texforce eval`: fixed seeds × prompts × adapter configurations × rewards → CSV, grid, mean and 95% CI."""

from __future__ import annotations

import argparse
from pathlib import Path

from texforce.errors import TexforceError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compare adapter configurations (base, text LoRA, U-Net LoRA, stacked, fused) on fixed seeds",
        epilog="examples:\n"
        "  texforce eval --config base --config text=runs/A/lora -o runs/A/eval\n"
        "  texforce eval --model CompVis/stable-diffusion-v1-4 --prompts animals --split heldout --seeds 8 \\\n"
        "      --config base --config text=runs/A/lora --config unet=refl_lora \\\n"
        "      --config text=runs/A/lora,unet=refl_lora --config text=fused --reward aesthetic -o compare\n"
        "An eval written to RUN/eval appears in `texforce report RUN`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="base model: hub id, local folder or built-in (default: the training default)")
    parser.add_argument(
        "--config",
        action="append",
        metavar="SPEC",
        help="base | text=PATH | unet=PATH | text=PATH,unet=PATH (repeatable; default: base)",
    )
    parser.add_argument("--prompts", default="animals", metavar="SET|FILE", help="a built-in set or a prompt file")
    parser.add_argument(
        "--split", default="heldout", choices=["train", "heldout"], help="which part of a built-in set"
    )
    parser.add_argument("--num-prompts", type=int, default=0, help="use only the first N prompts (0 = all)")
    parser.add_argument("--seeds", type=int, default=4, help="number of fixed seeds: seed, seed+1, …")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reward", action="append", metavar="SPEC", help="a reward (repeatable; default: jpeg)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="on GPU; CPU is fp32")
    parser.add_argument("-o", "--output", required=True, help="output folder (must not exist)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texforce.config import ModelConfig
    from texforce.evaluation import parse_setup, run_eval
    from texforce.models import resolve_device
    from texforce.prompts import load_prompt_set
    from texforce.rewards import parse_reward_spec

    if args.seeds < 1 or args.steps < 1 or args.num_prompts < 0:
        raise TexforceError("--seeds and --steps must be >= 1, --num-prompts >= 0")
    setups = [parse_setup(spec) for spec in args.config or ["base"]]
    if len({s.label for s in setups}) != len(setups):
        raise TexforceError("the same --config is given twice")
    rewards = args.reward or ["jpeg_compressibility"]
    for spec in rewards:
        parse_reward_spec(spec)
    prompt_set = load_prompt_set(args.prompts)
    prompts = list(prompt_set.eval if args.split == "heldout" else prompt_set.train)
    prompts = prompts[: args.num_prompts] if args.num_prompts else prompts
    if Path(args.output).exists():
        raise TexforceError(f"output {args.output} already exists")
    options = {
        "device": resolve_device(args.device),
        "dtype": args.dtype,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
    }
    seeds = list(range(args.seed, args.seed + args.seeds))
    base = args.model or ModelConfig().base
    summaries = run_eval(base, setups, prompts, seeds, rewards, Path(args.output), options)
    width = max(len(s.setup) for s in summaries)
    for s in summaries:
        print(f"{s.setup:<{width}}  {s.reward}  {s.mean:.4f}  95% CI [{s.ci_low:.4f}, {s.ci_high:.4f}]  n={s.n}")
    print(args.output)
    return 0
