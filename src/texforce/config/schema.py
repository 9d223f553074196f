"""Typed config dataclasses: declare a key with its help and allowed values (`option`), build a dataclass from a
nested dict (YAML plus overrides) with every value's type checked, list the keys (`config_keys`, which the
configuration reference is generated from), check their allowed values, and suggest the closest key for a
misspelt one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from texforce.errors import TexforceError

# `bounds` of a key: a comparison (`>= 1`, `> 0`) or an interval (`[0, 1)`, `(0, 1]`)
BOUNDS = re.compile(r"(?P<op>>=|>|<=|<) (?P<bound>\S+)|(?P<left>[\[(])(?P<low>\S+), (?P<high>\S+?)(?P<right>[\])])")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    choices: Sequence[str] | None = None,
    bounds: str | None = None,
) -> Any:
    """A config key: its default (or `factory` for a mutable one), help text and allowed values."""
    if bounds is not None and not BOUNDS.fullmatch(bounds):
        raise ValueError(f"bounds must look like '>= 1' or '(0, 1]', got {bounds!r}")
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "bounds": bounds}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Key:
    """One config key as users type it (`ddpo.clip_range`), with what `option` declared."""

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None
    bounds: str | None


def sections(cls: type) -> list[tuple[str, type]]:
    """The sections (nested dataclasses) of a config class, by key, in order."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]


def config_keys(cls: type, prefix: str = "") -> list[Key]:
    """Every key of a config class and of its sections, in order."""
    hints, keys = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys += config_keys(hint, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        meta = f.metadata
        keys.append(Key(prefix + f.name, hint, default, meta.get("help", ""), meta.get("choices"), meta.get("bounds")))
    return keys


def build(cls: type, data: Any, root: type, prefix: str = "") -> Any:
    """An instance of `cls` from a nested dict: unknown keys fail with the closest key of `root` suggested, and
    every value is checked against its field's type."""
    if not isinstance(data, dict):
        raise TexforceError(f"{prefix.rstrip('.') or 'config'} must be a section (mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in fields:
            raise TexforceError(f"unknown config key {prefix}{key}{_suggest(prefix, str(key), fields, root)}")
    values = {}
    for name in fields:
        if name not in data:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build(hint, data[name], root, f"{prefix}{name}.")
        else:
            values[name] = coerce(data[name], hint, f"{prefix}{name}")
    return cls(**values)


def _suggest(prefix: str, key: str, fields: list[str], root: type) -> str:
    """'; did you mean …?': the closest key in this section, else keys of that (or a close) name elsewhere."""
    close = [prefix + k for k in difflib.get_close_matches(key, fields, n=1, cutoff=0.8)]
    if not close:
        everywhere = [k.name for k in config_keys(root)]
        leaves = {k.rsplit(".", 1)[-1] for k in everywhere}
        names = [key] if key in leaves else difflib.get_close_matches(key, leaves, n=1)
        close = [k for k in everywhere if names and k.rsplit(".", 1)[-1] == names[0]]
    close = close or [prefix + k for k in difflib.get_close_matches(key, fields, n=1)]
    return f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(fields)}"


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for choice in options:
            if choice is not type(None):
                return coerce(value, choice, key)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise TexforceError(f"{key} must be a list, got {value!r}")
        return [coerce(v, item, key) for v in value]
    if hint is float and isinstance(value, str):  # YAML reads "2e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise TexforceError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def check(condition: bool, message: str) -> None:
    """A config check: a one-line `TexforceError` with `message` unless `condition` holds."""
    if not condition:
        raise TexforceError(message)


def one_of(names: Sequence[str]) -> str:
    """`a, b or c`."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def in_bounds(value: float, bounds: str) -> bool:
    """Whether `value` satisfies `bounds` (`>= 1`, `(0, 1]`, …)."""
    match = BOUNDS.fullmatch(bounds)
    if match["op"]:
        bound = float(match["bound"])
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[match["op"]]
    low, high = float(match["low"]), float(match["high"])
    above = value >= low if match["left"] == "[" else value > low
    below = value <= high if match["right"] == "]" else value < high
    return above and below


def check_values(config: Any, keys: Sequence[Key], choices: Mapping[str, Sequence[str]]) -> None:
    """Every key's value against its declared choices (or those of `choices`, for registries) and bounds; a
    `None` (unset) passes."""
    for key in keys:
        value = config
        for part in key.name.split("."):
            value = getattr(value, part)
        allowed = choices.get(key.name, key.choices)
        if value is None:
            continue
        if allowed and value not in allowed:
            raise TexforceError(f"{key.name} must be {one_of(list(allowed))}, got {value!r}")
        if key.bounds and not in_bounds(value, key.bounds):
            relation = key.bounds if key.bounds[0] in "<>" else f"in {key.bounds}"
            raise TexforceError(f"{key.name} must be {relation}, got {value}")
