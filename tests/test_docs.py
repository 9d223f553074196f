"""The front door and the docs site: the README is a front page, `mkdocs build --strict` passes (a broken link, a
missing anchor or a page left out of the nav fails it), and the generated references list every config key and
every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import yaml

from texforce.cli.main import build_parser
from texforce.cli.reference import cli_reference, config_reference, documented_keys, reference_pages
from texforce.run.run_config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "-f",
        str(ROOT / "mkdocs.yml"),
        "-d",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, f"mkdocs build --strict failed (pip install -e '.[docs]'?):\n{done.stderr[-3000:]}"
    for page in ("reference/config", "reference/cli", "world/model-card", "methods/results", "world/ceiling"):
        assert (tmp_path / page / "index.html").is_file(), page


def test_the_committed_references_are_the_generated_ones():
    for name, text in reference_pages().items():
        committed = (ROOT / "docs" / "reference" / name).read_text()
        assert committed == text, f"docs/reference/{name} is stale: run python -m texforce.cli.reference"


def accepted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key the config loader accepts, walked here from the dataclasses themselves."""
    hints, keys = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        keys += accepted_keys(hints[f.name], name + ".") if dataclasses.is_dataclass(hints[f.name]) else [name]
    return keys


def test_the_config_reference_lists_every_key_the_loader_accepts():
    page = config_reference()
    documented, accepted = documented_keys(page), accepted_keys(RunConfig)
    assert documented == accepted
    defaults = load_config()
    for key in documented:  # each is a real key: it takes its own default as an override
        value = defaults
        for part in key.split("."):
            value = getattr(value, part)
        load_config(None, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...')}"])
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert all(not row.rstrip(" |").endswith("|") for row in rows), "a key without help text"
    assert "| `train.algorithm` | str | `ddpo` | `ddpo` or `backprop` |" in page
    assert "| `ddpo.timestep_fraction` | float | `1.0` | `(0, 1]` |" in page


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [p for child in action.choices.values() for p in parsers(child)]
    return found


def test_the_cli_reference_covers_every_command_and_option():
    page = cli_reference()
    for parser in parsers(build_parser()):
        assert f"`{parser.prog}`" in page, parser.prog
        for action in parser._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                for flag in action.option_strings:
                    assert f"`{flag}" in page or f", {flag}" in page, f"{parser.prog} {flag}"


def test_the_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)[1]
    assert "pip install -e" in first_block and "texforce train" in first_block and "python -m pytest -q" in first_block
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert target.startswith("http") or (ROOT / target).exists(), target


def test_the_results_index_gives_each_generated_page_its_verdict():
    """docs/results/index.md repeats each claims page's verdict (from its meta.json) on the row of the same claim."""
    index = (ROOT / "docs" / "results" / "index.md").read_text().splitlines()
    metas = sorted((ROOT / "docs").glob("*/meta.json"))
    pages = [path for path in metas if "verdicts" in json.loads(path.read_text())]
    assert {path.parent.name for path in pages} >= {"methods", "fusion", "curves", "hacking"}
    for path in pages:
        for verdict in json.loads(path.read_text())["verdicts"]:
            rows = [line for line in index if line.startswith(f"| {verdict['claim']} |")]
            assert len(rows) == 1, f"no row for {path.parent.name}'s claim {verdict['claim']!r}"
            outcome = verdict["outcome"]
            assert f"| {outcome}" in rows[0], f"{path.parent.name}: {verdict['claim']!r} is {outcome} on its page"


def test_the_results_index_names_the_machine_each_page_was_judged_on():
    """Every CPU the results index names is one a page's meta.json records, and each generated claim row names its
    own page's machine: the index cannot say Intel Xeon for runs whose pages say AMD EPYC."""
    text = (ROOT / "docs" / "results" / "index.md").read_text()
    metas = [json.loads(path.read_text()) for path in sorted((ROOT / "docs").glob("*/meta.json"))]
    machines = {meta["experiment"]: meta["machine"] for meta in metas}
    cpus = {machine.split(",")[0].replace("(R)", "") for machine in machines.values()}
    for named in re.findall(r"Intel(?:\(R\))? Xeon|AMD EPYC", text):
        assert any(named.replace("(R)", "") in cpu for cpu in cpus), f"the index names {named}, no page was run on it"
    for meta in metas:
        for verdict in meta.get("verdicts", []):
            row = next(line for line in text.splitlines() if line.startswith(f"| {verdict['claim']} |"))
            assert f"| {machines[meta['experiment']]} |" in row, verdict["claim"]
