"""`texforce fuse`: merge several text-encoder adapters into one by a weighted sum of their updates."""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--model", help="base model the adapters belong to (default: the first adapter's base)")
    parser.add_argument("-o", "--output", required=True, help="output folder (both formats)")
    parser.set_defaults(func=run)


def _base_of(adapter: str) -> str | None:
    for candidate in (Path(adapter), Path(adapter) / "text_encoder", Path(adapter) / "lora" / "text_encoder"):
        config = candidate / "adapter_config.json"
        if config.is_file():
            return json.loads(config.read_text()).get("base_model_name_or_path")
    return None


def run(args: argparse.Namespace) -> int:
    from texforce.config import ModelConfig
    from texforce.export import fuse_adapter_files

    weights = args.weights or [1.0 / len(args.adapters)] * len(args.adapters)
    if len(weights) != len(args.adapters):
        raise TexforceError(f"{len(args.adapters)} adapters but {len(weights)} weights")
    output = Path(args.output)
    if output.exists():
        raise TexforceError(f"output {output} already exists")
    base = args.model or _base_of(args.adapters[0]) or ModelConfig().base
    print(fuse_adapter_files(base, args.adapters, weights, output))
    return 0
