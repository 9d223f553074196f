"""`texforce train [CONFIG] [key=value ...] [--resume RUN]`."""

from __future__ import annotations

import argparse

from texforce.errors import TexforceError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="DDPO fine-tuning of a text-encoder (and optionally U-Net) LoRA",
        description="Train with a YAML config (default: the embedded offline run) and key=value overrides.",
        epilog="examples:\n  texforce train\n  texforce train sd15_jpeg train.num_epochs=10\n"
        "  texforce train --resume runs/20261125-120000\n"
        "  accelerate launch --multi_gpu --num_processes 8 -m texforce train sd15_jpeg   # one process per GPU",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("args", nargs="*", metavar="CONFIG|KEY=VALUE", help="a .yaml config, then overrides")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines (for logs)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from texforce.run.train import train_run

    config_path, overrides = None, []
    for item in args.args:
        if "=" in item:
            overrides.append(item)
        elif config_path is None:
            config_path = item
        else:
            raise TexforceError(f"two config files given ({config_path}, {item}); overrides look like key=value")
    if config_path is None and args.resume is None:
        config_path = "default"
    run_dir = train_run(config_path, overrides, resume=args.resume, quiet=args.quiet)
    if PartialState().is_main_process:  # one line, also under `accelerate launch`
        print(run_dir)
    return 0
