"""`texforce` command line: one module per verb, each exposing `register(subparsers)`."""

from __future__ import annotations

import argparse
import sys

from texforce.cli import eval, experiment, fuse, report, rewards, sample, score, train, world
from texforce.errors import TexforceError

COMMANDS = [train, sample, fuse, rewards, world, score, eval, report, experiment]

EPILOG = """examples:
  texforce train                                  # the embedded offline default, minutes on a CPU
  texforce train configs/sd15_jpeg.yaml train.learning_rate=1e-4
  texforce train --resume runs/2026-11-25_120000
  texforce sample --text-lora runs/X/text_encoder_lora --prompt "a photo of a hand" -o hand.png
  texforce fuse A B --weights 0.6 0.4 -o fused
  texforce rewards
  texforce eval --config base --config text=runs/A/lora -o runs/A/eval   # fixed seeds, mean ± 95% CI
  texforce report runs/2026-11-25_120000          # self-contained HTML: curves, grids, config, eval
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="texforce",
        description="Reward fine-tuning of text-to-image diffusion models through their text encoder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TexforceError as error:
        print(f"texforce {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"texforce {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
