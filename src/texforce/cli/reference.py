"""The docs site's references, generated from the code: the configuration reference from the config dataclasses
(every key, type, default, allowed values and help) and the command-line reference from the argparse parsers
(`texforce.cli.main.build_parser`).

    python -m texforce.cli.reference            # → docs/reference/config.md, docs/reference/cli.md

tests/test_docs.py fails when the committed pages differ from what this writes.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from texforce.algorithms import ALGORITHMS
from texforce.config.schema import Key, config_keys, one_of, sections
from texforce.run.run_config import REGISTRY_CHOICES, RunConfig

USAGE_WIDTH = 100


def cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def type_name(hint: Any) -> str:
    """`int`, `float or null`, `list of str`, …"""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else type_name(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"list of {type_name(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


def yaml_value(value: Any) -> str:
    """A default as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return f"[{', '.join(map(str, value))}]"
    if value == "":
        return '""'
    return str(value)


def allowed(key: Key) -> str:
    choices = REGISTRY_CHOICES.get(key.name, key.choices)
    if choices:
        return one_of([f"`{c}`" for c in choices])
    return f"`{key.bounds}`" if key.bounds else ""


def key_table(keys: list[Key]) -> str:
    rows = ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    for key in keys:
        row = [f"`{key.name}`", type_name(key.type), f"`{yaml_value(key.default)}`", allowed(key), key.help]
        rows.append("| " + " | ".join(cell(text) for text in row) + " |")
    return "\n".join(rows) + "\n"


def config_reference() -> str:
    """reference/config.md: one table of top-level keys, then one per section, the algorithms' last."""
    owners = {name: algorithm for algorithm, cls in ALGORITHMS.items() for name in cls.sections}
    keys = config_keys(RunConfig)
    text = [
        "# Configuration reference\n",
        "_Generated from the config dataclasses (`texforce/config/` and each algorithm's module) by "
        "`python -m texforce.cli.reference`; do not edit by hand._\n",
        "A config is a YAML file of these sections (`texforce train my.yaml`), or a shipped config by name "
        "(`texforce train sd15_jpeg`), and any key can be overridden on the command line as `section.key=value` "
        "(`texforce train default train.num_epochs=5`). Every key, type and allowed value is checked when the "
        "config loads; an unknown key fails with the closest valid one suggested.\n",
        "## Top-level keys\n",
        key_table([k for k in keys if "." not in k.name]),
    ]
    for name, section in sections(RunConfig):
        owner = f" — for `train.algorithm: {owners[name]}`" if name in owners else ""
        doc = " ".join((section.__doc__ or "").split())
        text += [f"## `{name}`{owner}\n", f"{doc}\n", key_table([k for k in keys if k.name.startswith(name + ".")])]
    return "\n".join(text)


def documented_keys(page: str) -> list[str]:
    """The keys a configuration reference page lists (its tables' first column)."""
    return [line.split("`")[1] for line in page.splitlines() if line.startswith("| `")]


# ---------------------------------------------------------------------------------------------- command line
def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def argument_rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        name = ", ".join(action.option_strings) or (action.metavar or action.dest)
        if action.option_strings and action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{yaml_value(default)}`"
        if action.choices and not isinstance(action.choices, dict):
            shown = (shown + " " if shown else "") + f"({one_of([str(c) for c in action.choices])})"
        rows.append([f"`{name}`", action.help or "", shown])
    return rows


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def command_section(parser: argparse.ArgumentParser, level: int) -> list[str]:
    text = [f"{'#' * level} `{parser.prog}`\n"]
    if parser.description:
        text.append(f"{parser.description.strip()}\n")
    text.append(f"```\n{usage(parser)}\n```\n")
    rows = argument_rows(parser)
    if rows:
        text.append("| argument | what it does | default |\n|---|---|---|")
        text += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        text.append("")
    if parser.epilog:
        text.append(f"```\n{parser.epilog.strip()}\n```\n")
    for _, child in subcommands(parser):
        text += command_section(child, level + 1)
    return text


def cli_reference() -> str:
    """reference/cli.md: `texforce` and every verb (and sub-verb): usage, arguments, examples."""
    from texforce.cli.main import build_parser

    parser = build_parser()
    text = [
        "# Command-line reference\n",
        "_Generated from the argparse parsers (`texforce.cli.main.build_parser`) by "
        "`python -m texforce.cli.reference`; do not edit by hand._ The same text is `texforce VERB --help`.\n",
    ]
    return "\n".join(text + command_section(parser, 2))


def reference_pages() -> dict[str, str]:
    """The generated pages by file name."""
    return {"config.md": config_reference(), "cli.md": cli_reference()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/reference"), help="folder of the pages")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, text in reference_pages().items():
        (args.output / name).write_text(text)
        print(args.output / name)


if __name__ == "__main__":
    main()
