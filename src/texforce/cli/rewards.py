"""`texforce rewards`: list the registered rewards, marking those direct backprop can train on."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rewards", help="list the available rewards")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texforce.rewards import REWARDS

    width = max(map(len, REWARDS))
    for name, entry in REWARDS.items():
        print(f"{name:<{width}}  {'∇' if entry.differentiable else ' '}  {entry.description}")
    print("\n∇: differentiable, usable with train.algorithm=backprop (every reward works with ddpo)")
    print("combine with weights: jpeg_compressibility:1.0+aesthetic:0.5")
    return 0
