"""`texforce plan`: how much GPU and host memory a config's run needs, measured on the meta device (no GPU, no
weights, seconds)."""

from __future__ import annotations

import argparse
import json

from texforce.errors import TexforceError

EPILOG = """examples:
  texforce plan flux_schnell_imagereward                  # peak per GPU and per process, verdicts for 24/40/80 GB
  texforce plan sdxl_imagereward train.batch_size_per_device=4 ddpo.gradient_checkpointing=true
  texforce plan sd14_imagereward --json                   # the same as JSON
  texforce plan sd15_jpeg --write-header                  # state the plan in the config file's header
The models are built on the meta device from their architecture (a hub id without weights here: its family's
published architecture); each phase (sampling, one update micro-batch or backprop step, one evaluation batch) is
traced forward and backward with per-block checkpointing as configured and a GPU kernel's attention memory.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="a config's GPU and host memory, planned on the meta device (does it fit 24/40/80 GB?)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="a config file or a shipped config's name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--write-header", action="store_true", help="write the plan line into the config's header")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texforce.files import write_text_atomic
    from texforce.run.plan import format_plan, header_line, plan_memory, with_header
    from texforce.run.run_config import load_config, resolve_config_path

    if args.write_header and args.overrides:
        raise TexforceError("--write-header states the config file's own plan: leave out the key=value overrides")
    plan = plan_memory(load_config(args.config, args.overrides))
    print(json.dumps(plan.to_json(), indent=2) if args.json else format_plan(plan))
    if args.write_header:
        path = resolve_config_path(args.config)
        write_text_atomic(path, with_header(path.read_text(), header_line(plan)))
        print(f"wrote the plan line into {path}")
    return 0
