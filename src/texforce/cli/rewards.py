"""`texforce rewards`: list the registered rewards."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rewards", help="list the available rewards")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texforce.rewards import REWARD_DESCRIPTIONS, REWARDS

    width = max(map(len, REWARDS))
    for name in REWARDS:
        print(f"{name:<{width}}  {REWARD_DESCRIPTIONS.get(name, '')}")
    print("\ncombine with weights: jpeg_compressibility:1.0+aesthetic:0.5")
    return 0
