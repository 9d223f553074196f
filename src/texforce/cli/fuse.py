"""`texforce fuse`: merge several text-encoder adapters into one by a weighted sum of their updates."""

from __future__ import annotations

import argparse
from pathlib import Path

from texforce.errors import TexforceError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fuse",
        help="weighted sum of text-encoder adapters (same rank and targets) into one adapter",
        epilog="example:\n  texforce fuse runs/count/lora runs/relation/lora --weights 0.5 0.5 -o fused",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER", help="PEFT folders, diffusers files/folders or runs")
    parser.add_argument("--weights", nargs="+", type=float, help="one per adapter (default: equal, summing to 1)")
    parser.add_argument(
        "--model", help="base model the adapters belong to (default: the first adapter's base, else the offline world)"
    )
    parser.add_argument("-o", "--output", required=True, help="output folder (both formats)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texforce.adapters.files import fuse_adapter_files, require_adapter
    from texforce.observe.runlog import check_writable
    from texforce.run.defaults import choose_base

    weights = args.weights or [1.0 / len(args.adapters)] * len(args.adapters)
    if len(weights) != len(args.adapters):
        raise TexforceError(f"{len(args.adapters)} adapters but {len(weights)} weights")
    for adapter in args.adapters:
        require_adapter(adapter, "adapter")
    output = Path(args.output)
    if output.exists():
        raise TexforceError(f"output {output} already exists")
    check_writable(output, "--output")
    print(fuse_adapter_files(choose_base(args.model, args.adapters[:1]), args.adapters, weights, output))
    return 0
