"""`texforce report RUN [-o FILE]`: a self-contained HTML page of a run (curves, grids, config, eval)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run (opens offline in any browser)",
        epilog="examples:\n  texforce report runs/20261125-120000\n  texforce report runs/A -o a.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", metavar="RUN", help="a run folder")
    parser.add_argument("-o", "--output", help="HTML file (default: RUN/report.html)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texforce.observe.report import write_report

    print(write_report(Path(args.run), Path(args.output) if args.output else None))
    return 0
