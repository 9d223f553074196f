"""`texforce eval`: fixed seeds × prompts × adapter configurations × rewards → CSV, grid, mean and 95% CI."""

from __future__ import annotations

import argparse
from pathlib import Path

from texforce.errors import TexforceError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compare adapter configurations (base, text LoRA, U-Net LoRA, stacked, fused) on fixed seeds",
        description="Render the same prompts from the same seeds under each configuration and score them. "
        "`texforce eval RUN` takes the base model, prompts, sampler settings and reward from the run's config.yaml; "
        "otherwise the base is --model, else the one the first adapter records, else the offline world, and the "
        "other defaults are the ones that fit that base.",
        epilog="examples:\n"
        "  texforce eval runs/A                              # base vs the run's adapters → runs/A/eval\n"
        "  texforce eval runs/A --style plain --style engineered -o styles   # also with quality tags\n"
        "  texforce eval --config base --config text=runs/A/lora -o compare\n"
        "  texforce eval --model CompVis/stable-diffusion-v1-4 --prompts animals --split heldout --seeds 8 \\\n"
        "      --config base --config text=runs/sd14/lora --config unet=refl_lora \\\n"
        "      --config text=runs/sd14/lora,unet=refl_lora --config text=fused --reward aesthetic -o compare\n"
        "An eval written to RUN/eval appears in `texforce report RUN`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run", nargs="?", metavar="RUN", help="a run folder: compare base with its adapters in its settings"
    )
    parser.add_argument("--model", help="base model: hub id, local folder or built-in (default: see above)")
    parser.add_argument(
        "--config",
        action="append",
        metavar="SPEC",
        help="base | text=PATH | unet=PATH | text=PATH,unet=PATH (repeatable; default: base, or base and RUN's)",
    )
    parser.add_argument("--prompts", metavar="SET|FILE", help="a built-in set or a prompt file (default: the base's)")
    parser.add_argument(
        "--split", default="heldout", choices=["train", "heldout"], help="which part of a built-in set"
    )
    parser.add_argument("--num-prompts", type=int, default=0, help="use only the first N prompts (0 = all)")
    parser.add_argument(
        "--style",
        action="append",
        metavar="STYLE",
        help="also write each prompt in this style (repeatable): plain, engineered, tags_suffix, one_tag, careful, "
        "paraphrase, or a template such as '{prompt}, highly detailed'; judged on the plain prompt (default: plain)",
    )
    parser.add_argument("--seeds", type=int, default=4, help="number of fixed seeds: seed, seed+1, …")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reward", action="append", metavar="SPEC", help="a reward (repeatable; default: the base's)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the base's; see the line printed)")
    parser.add_argument("--guidance-scale", type=float, help="CFG scale (default: the base's; see the line printed)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="images per pipeline call, at most (default: the base's, which fits a 24 GB GPU; the world: all)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype",
        default="bf16",
        choices=["bf16", "fp16", "fp32"],
        help="on GPU; CPU is fp32 (fp16 decodes in fp32 when the VAE asks, force_upcast)",
    )
    parser.add_argument("-o", "--output", help="output folder, must not exist (default with RUN: RUN/eval)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from texforce.bases.loading import resolve_device
    from texforce.observe.evaluation import paired_changes, parse_setup, read_rows, run_eval
    from texforce.prompts import load_prompt_set
    from texforce.rewards import parse_reward_spec
    from texforce.run.defaults import BaseDefaults, batch_size_for, choose_base, defaults_for, judge
    from texforce.run.run_config import load_config

    if args.seeds < 1 or any(v is not None and v < 1 for v in (args.steps, args.batch_size)) or args.num_prompts < 0:
        raise TexforceError("--seeds, --steps and --batch-size must be >= 1, --num-prompts >= 0")
    specs = args.config
    if args.run is not None:
        run_dir = Path(args.run)
        if not (run_dir / "config.yaml").is_file():
            raise TexforceError(f"{args.run} is not a run folder (no config.yaml)")
        if not (run_dir / "lora").is_dir():
            raise TexforceError(f"run {args.run} has no final adapters (lora/): texforce train --resume {args.run}")
        defaults = load_config(run_dir / "config.yaml")
        trained = [key for key, lora in (("text", defaults.text_lora), ("unet", defaults.unet_lora)) if lora.use]
        specs = specs or ["base", ",".join(f"{key}={run_dir / 'lora'}" for key in trained)]
        output = Path(args.output) if args.output else run_dir / "eval"
    elif args.output is None:
        raise TexforceError("give -o OUTPUT (a folder to create), or a run folder RUN (then RUN/eval)")
    else:
        output = Path(args.output)
    setups = [parse_setup(spec) for spec in specs or ["base"]]
    if len({s.label for s in setups}) != len(setups):
        raise TexforceError("the same --config is given twice")
    if args.run is not None:
        base = args.model or defaults.model.base
        resolved = BaseDefaults(defaults, batch_size_for(base), f"the run's config.yaml ({run_dir / 'config.yaml'})")
    else:
        base = choose_base(args.model, [path for s in setups for path in (s.text, s.unet)])
        resolved = defaults_for(base)
        defaults = resolved.config
    rewards = args.reward or [judge(defaults)]
    for spec in rewards:
        parse_reward_spec(spec)
    if args.prompts:
        prompt_set = load_prompt_set(args.prompts)
    else:
        prompt_set = load_prompt_set(defaults.prompts.train, defaults.prompts.eval)
    prompts = list(prompt_set.eval if args.split == "heldout" else prompt_set.train)
    prompts = prompts[: args.num_prompts] if args.num_prompts else prompts
    if output.exists():
        raise TexforceError(f"output {output} already exists")
    options = {
        "device": resolve_device(args.device),
        "dtype": args.dtype,
        "steps": args.steps or defaults.sample.num_steps,
        "guidance_scale": defaults.sample.guidance_scale if args.guidance_scale is None else args.guidance_scale,
        "max_sequence_length": defaults.model.max_sequence_length,
        "batch_size": args.batch_size or resolved.batch_size,
    }
    given = {"--steps": args.steps, "--guidance-scale": args.guidance_scale, "--batch-size": args.batch_size}
    seeds = list(range(args.seed, args.seed + args.seeds))
    styles = args.style or ["plain"]
    if len(set(styles)) != len(styles):
        raise TexforceError("the same --style is given twice")
    summaries = run_eval(base, setups, prompts, seeds, rewards, output, options, styles)
    line = resolved.describe(options["steps"], options["guidance_scale"], options["batch_size"], given)
    print(f"texforce eval: {line}", file=sys.stderr)  # after run_eval's checks, whose errors are one line
    width = max(len(s.setup) for s in summaries)
    for s in summaries:
        style = "" if styles == ["plain"] else f"{s.style}  "
        print(
            f"{s.setup:<{width}}  {style}{s.reward}  {s.mean:.4f}  95% CI [{s.ci_low:.4f}, {s.ci_high:.4f}]  n={s.n}"
        )
    for c in paired_changes(read_rows(output)):
        print(f"{c.setup} − base  {c.style}  {c.reward}  {c.mean:+.4f} ± {c.ci:.4f} (paired, {c.n_prompts} prompts)")
    print(output)
    return 0
