"""The README's main job against its budget: `texforce train` (the embedded default) as its own process, once per
seed, with its wall time and peak resident memory, against 5 minutes and 2 GB on the 2-core machine.

    nice -n 10 python -m benchmarks.default_budget                   # seed 0, the shipped default
    python -m benchmarks.default_budget --seeds 0 1 2 --json budget.jsonl
    python -m benchmarks.default_budget --smoke                      # tiny model, seconds: checks the harness

Exit status 1 when a run is over budget. The same measurement, with the held-out judging, is
`texforce experiment default` (docs/default/results.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.timing import append_json_lines
from texforce.experiments.harness import BUDGETS, Settings, machine
from texforce.experiments.main_job import BUDGET, timed_train, within_budget

SMOKE = ("model.base=texforce/tiny-random", "backprop.num_grad_steps=2")  # with the tiny budget's overrides


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.default_budget`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.default_budget", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 1 epoch of 2 samples: checks the harness")
    parser.add_argument("--json", type=Path, help="also append one JSON line per run to this file")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        budget = BUDGETS["tiny" if args.smoke else "full"]
        settings = Settings(budget, Path(folder), Path(folder), len(args.seeds), overrides=SMOKE if args.smoke else ())
        for seed in args.seeds:
            _, timing = timed_train(settings, "default", seed)
            result = {"config": "default", "seed": seed, **timing, "budget": BUDGET, "within": within_budget(timing)}
            results.append(result | {"machine": machine()})
            print(json.dumps(results[-1]))
    if args.json:
        append_json_lines(args.json, results)
    return results


if __name__ == "__main__":
    sys.exit(0 if all(r["within"] for r in main()) else 1)
