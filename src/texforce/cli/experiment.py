"""`texforce experiment NAME`: test one of the TexForce paper's claims in the offline world, end to end."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from texforce.errors import TexforceError

NAMES = ("default", "methods", "stacking", "versus", "styles", "efficiency", "fusion", "curves", "hacking")

EPILOG = """experiments:
  default   the README's main job (`texforce train`) per training seed: time, memory, held-out and `single` gains
  methods   base · text LoRA · U-Net LoRA · both stacked · joint, on held-out prompts (+ semantics on `single`)
  stacking  the text adapter (world_score) on a U-Net adapter tuned for JPEG compressibility, both judged
  versus    base · prompt-engineered · TexForce-DDPO · TexForce-backprop · U-Net LoRA · stacked, one table
  styles    the default run, world_ddpo and world_flow judged in every prompt style (plain, engineered, …); ablations
  efficiency  held-out world_score against samples seen, DDPO vs direct backprop: samples each needs for +0.10
  fusion    a counting and a relations text adapter fused by weighted sum, judged on each task
  curves    reward per epoch, text vs U-Net LoRA, on world_alignment and on jpeg_compressibility
  hacking   trained on the learned world_clipscore, judged per epoch and held-out by the exact world_alignment

examples:
  texforce experiment methods                        # full budget, 3 seeds → docs/methods/results.md
  texforce experiment curves --seeds 5 -o docs/curves5
  texforce experiment hacking train.num_epochs=30    # key=value overrides (every arm) come right after NAME
  texforce experiment fusion --budget tiny -o /tmp/fusion   # seconds: checks the plumbing, not the claim
  texforce experiment methods --seeds 5              # the plan's next look: trains and judges seeds 3, 4 only
  texforce experiment methods --page-only            # the page and verdicts again from docs/methods/runs/
Training runs are cached in --runs-dir (runs/experiments/BUDGET): experiments sharing an arm train it once, an
interrupted experiment resumes. What a verdict needs from each seed (per-image scores, metrics.jsonl, fp16
adapters) is committed under OUTPUT/runs/; a seed recorded there is not trained or judged again. Verdicts follow
the sequential seed plan (looks at 3, 5, 8, 12, 16 seeds; docs/results/index.md). The index of all results is
written to experiments.md beside the output folder.
On one GPU, every experiment at DDPO's budget within a deadline: python -m benchmarks.gpu_suite
(docs/performance/gpu-suite.md).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="test a claim of the TexForce paper in the offline world (tables, curves, grids into docs/)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=NAMES, metavar="NAME", help=f"one of: {', '.join(NAMES)}")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every arm (right after NAME)"
    )
    parser.add_argument(
        "--page-only",
        action="store_true",
        help="rewrite results.md and the verdicts from the committed per-run records (OUTPUT/runs); train nothing",
    )
    parser.add_argument("--budget", default="full", choices=["full", "tiny"], help="full: the shipped configs")
    parser.add_argument("--seeds", type=int, help="training seeds 0..N-1 (default: 3 for full, 1 for tiny)")
    parser.add_argument("-o", "--output", type=Path, help="results folder (default: docs/NAME; replaced)")
    parser.add_argument("--runs-dir", type=Path, help="training runs (default: runs/experiments/BUDGET)")
    parser.add_argument("--model", help="base model of every arm and of the evaluation (default: the arms')")
    parser.add_argument("--judge", default="world_score", help="the reward that judges")
    parser.add_argument("--proxy", default="world_preference", help="hacking: the learned reward trained on")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texforce.experiments import BUDGETS, Settings, run_experiment
    from texforce.rewards import parse_reward_spec

    budget = BUDGETS[args.budget]
    num_seeds = args.seeds if args.seeds is not None else budget.num_seeds
    if num_seeds < 1:
        raise TexforceError(f"--seeds must be >= 1, got {num_seeds}")
    for spec in (args.judge, args.proxy):
        if parse_reward_spec(spec) != [(spec, 1.0)]:
            raise TexforceError(f"--judge and --proxy take one reward name, no weight, got {spec!r}")
    settings = Settings(
        budget=budget,
        output=args.output or Path("docs") / args.name,
        runs_dir=args.runs_dir or Path("runs") / "experiments" / args.budget,
        num_seeds=num_seeds,
        model=args.model,
        overrides=tuple(args.overrides),
        judge=args.judge,
        proxy=args.proxy,
        quiet=not args.verbose,  # the global --verbose also shows each training run's progress
        command=shlex.join(["texforce", "experiment", args.name, *args.overrides, *_given(args)]),
        page_only=args.page_only,
    )
    print(run_experiment(args.name, settings))
    return 0


def _given(args: argparse.Namespace) -> list[str]:
    """The options given (the defaults left out), for the results page's command."""
    options = []
    for flag, value, default in (
        ("--budget", args.budget, "full"),
        ("--seeds", args.seeds, None),
        ("-o", args.output, None),
        ("--runs-dir", args.runs_dir, None),
        ("--model", args.model, None),
        ("--judge", args.judge, "world_score"),
        ("--proxy", args.proxy, "world_preference"),
    ):
        if value != default:
            options += [flag, str(value)]
    return options
