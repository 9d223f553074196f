"""`texforce` command line: one module per verb, each exposing `register(subparsers)`."""

from __future__ import annotations

import argparse
import sys
import warnings

from texforce.cli import (
    diagnose,
    eval,
    experiment,
    export,
    fuse,
    plan,
    report,
    rewards,
    sample,
    score,
    train,
    world,
)
from texforce.errors import TexforceError

COMMANDS = [train, sample, fuse, export, rewards, world, score, eval, report, experiment, diagnose, plan]

EPILOG = """examples:
  texforce train                                  # the embedded offline default, minutes on a CPU
  texforce train sd15_jpeg text_lora.learning_rate=1e-4   # a shipped config (texforce/configs) + overrides
  texforce train --resume runs/20261125-120000
  texforce sample --text-lora runs/X/lora --prompt "two red circles" -o circles.png   # the adapter's base model
  texforce fuse runs/A/lora runs/B/lora --weights 0.6 0.4 -o fused
  texforce export runs/A --format kohya -o A.safetensors   # one file for ComfyUI, Forge, AUTOMATIC1111
  texforce rewards
  texforce eval runs/A                            # base vs the run's adapter on its held-out prompts → runs/A/eval
  texforce report runs/20261125-120000            # self-contained HTML: curves, grids, config, eval
  texforce plan flux_schnell_imagereward          # GPU and host memory of a config, before any GPU
Without --model, sample, eval and fuse use the base model the adapter records, else the offline world.
"""
VERBOSE = "show the libraries' warnings and loading bars (hidden by default)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="texforce",
        description="Reward fine-tuning of text-to-image diffusion models through their text encoder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    for verb in subparsers.choices.values():  # `texforce VERB --verbose` too; SUPPRESS keeps a global one
        verb.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE)
    return parser


def quiet_libraries(verbose: bool) -> None:
    """Hide the libraries' chatter unless `verbose`: transformers' torchvision notes, diffusers' and transformers'
    loading bars, peft's multiple-adapters note, FutureWarnings. texforce's own lines are what a person reads."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity(library.WARNING if verbose else library.ERROR)
        (library.enable_progress_bar if verbose else library.disable_progress_bar)()
    if not verbose:
        warnings.simplefilter("ignore")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        return int(args.func(args) or 0)
    except TexforceError as error:
        print(f"texforce {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # a run says how to go on (resume, or start again)
        print(f"texforce {args.command}: interrupted{f'; {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
