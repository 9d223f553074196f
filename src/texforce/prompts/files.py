"""Prompt files, the benchmarks' as published (read from the user's copy; nothing is shipped), told apart by content:

    PartiPrompts   `PartiPrompts.tsv`: tab-separated, column `Prompt` (also `Category`, `Challenge`, `Note`)
    DrawBench      its sheet saved as CSV: column `Prompts` (also `Category`)
    GenEval        `evaluation_metadata.jsonl`: one JSON object a line, field `prompt` (also `tag`, `include`, …)
    T2I-CompBench  `color_val.txt`, …: one prompt a line (as any plain text file)
    a JSON list    of strings, or of objects with `prompt` / `text`

`FILE:Column=Value` keeps the rows whose column (or JSONL field) has that value; `|` allows several values and
more `:Column=Value` narrow further: `PartiPrompts.tsv:Category=Animals:Challenge=Basic|Complex`,
`evaluation_metadata.jsonl:tag=counting`. A table or JSONL without a prompt column is a one-line error naming the
columns it has.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from texforce.errors import TexforceError

PROMPT_COLUMNS = ("Prompt", "Prompts", "prompt", "prompts", "text", "caption")  # the first one present is read
Filters = dict[str, set[str]]


def split_source(source: str) -> tuple[Path, Filters]:
    """`FILE[:Column=Value[|Value]]…` → the file and its row filters (a plain path when it exists as given)."""
    if Path(source).exists() or "=" not in source:
        return Path(source), {}
    path, *conditions = source.split(":")
    filters: Filters = {}
    for condition in conditions:
        column, equals, values = condition.partition("=")
        if not equals or not column:
            raise TexforceError(f"prompt source {source!r}: filters are written FILE:Column=Value[|Value]")
        filters.setdefault(column, set()).update(values.split("|"))
    return Path(path), filters


def _pick(rows: list[dict], columns: list[str], filters: Filters, path: Path, what: str) -> list[str]:
    """The prompt column of the rows that pass `filters`; one-line errors naming the columns seen."""
    seen = ", ".join(columns) or "none"
    column = next((c for c in PROMPT_COLUMNS if c in columns), None)
    if column is None:
        raise TexforceError(
            f"prompt file {path}: {what} without a prompt column ({' / '.join(PROMPT_COLUMNS[:3])}); "
            f"its columns: {seen}"
        )
    unknown = sorted(set(filters) - set(columns))
    if unknown:
        raise TexforceError(f"prompt file {path}: no column {', '.join(unknown)} to filter on; its columns: {seen}")
    kept = [row for row in rows if all(str(row.get(c)) in values for c, values in filters.items())]
    return [str(row[column]).strip() for row in kept if row.get(column) and str(row[column]).strip()]


def _table(text: str, path: Path, delimiter: str, filters: Filters) -> list[str]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = list(reader)
    kind = "a tab-separated table" if delimiter == "\t" else "a CSV table"
    return _pick(rows, [c for c in reader.fieldnames or [] if c], filters, path, kind)


def _jsonl(lines: list[str], path: Path, filters: Filters) -> list[str]:
    rows, columns = [], {}
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TexforceError(f"prompt file {path}: line {number} is not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise TexforceError(f"prompt file {path}: line {number} is no JSON object")
        rows.append(row)
        columns.update(dict.fromkeys(row))
    return _pick(rows, list(columns), filters, path, "JSON lines")


def _json_list(text: str, path: Path) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TexforceError(f"prompt file {path} is not valid JSON: {error}") from None
    if not isinstance(data, list):
        raise TexforceError(f"prompt file {path} must hold a JSON list, got {type(data).__name__}")
    prompts = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            item = item.get("prompt", item.get("text"))
        if not isinstance(item, str):
            raise TexforceError(f"prompt file {path}: item {i} is neither a string nor has a 'prompt'/'text' string")
        if item.strip():
            prompts.append(item.strip())
    return prompts


def _is_csv_table(first: str, path: Path) -> bool:
    """A CSV file, or a first line that is a CSV header naming a prompt column (plain prompts may hold commas)."""
    if path.suffix.lower() == ".csv":
        return True
    header = next(csv.reader([first]), [])
    return len(header) > 1 and any(field.strip() in PROMPT_COLUMNS for field in header)


def read_prompts(path: Path, filters: Filters) -> list[str]:
    """The prompts of a file in any layout above, filtered; the layout is picked by content."""
    if not path.is_file():
        raise TexforceError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise TexforceError(f"prompt file {path} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if path.suffix.lower() == ".json" or first.startswith("["):
        prompts, columns = _json_list(text, path), False
    elif first.startswith("{"):
        prompts, columns = _jsonl(lines, path, filters), True
    elif "\t" in first:
        prompts, columns = _table(text, path, "\t", filters), True
    elif _is_csv_table(first, path):
        prompts, columns = _table(text, path, ",", filters), True
    else:
        prompts, columns = lines, False
    if filters and not columns:
        raise TexforceError(f"prompt file {path} is a list of prompts, with no columns to filter on")
    if not prompts:
        raise TexforceError(f"prompt file {path} holds no prompts{' that pass the filter' if filters else ''}")
    return prompts
