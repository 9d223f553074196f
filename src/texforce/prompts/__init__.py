"""Prompt sets: built-in ones (the TexForce paper's tasks, DDPO's animals) and files.

A `PromptSet` keeps training prompts and held-out evaluation prompts apart. Single-prompt tasks
evaluate on their own prompt with fresh seeds, as the paper does; `animals` holds out every fifth animal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from texforce.errors import TexforceError

ANIMALS = [
    "cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer",
    "cow", "goat", "lion", "tiger", "bear", "raccoon", "fox", "wolf", "lizard", "beetle",
    "ant", "butterfly", "fish", "shark", "whale", "dolphin", "squirrel", "mouse", "rat", "snake",
    "turtle", "frog", "chicken", "duck", "goose", "bee", "pig", "turkey", "fly", "llama",
    "camel", "bat", "gorilla", "hedgehog", "kangaroo",
]  # fmt: skip


@dataclass(frozen=True)
class PromptSet:
    """Training prompts and the held-out prompts used to judge generalisation."""

    name: str
    train: tuple[str, ...]
    eval: tuple[str, ...]


def _single(name: str, *prompts: str) -> Callable[[], PromptSet]:
    return lambda: PromptSet(name, prompts, prompts)


def _animals() -> PromptSet:
    prompts = [f"A photo of a {animal}" for animal in ANIMALS]
    held_out = prompts[4::5]
    return PromptSet("animals", tuple(p for p in prompts if p not in held_out), tuple(held_out))


def _world(family: str | None) -> Callable[[], PromptSet]:
    """The offline world's prompts: training claims and claims never trained on (held-out phrasings and
    colour–shape pairings). `family` None = the compositional mix of counts and relations; "all" = every family:
    32 training prompts each of single objects, counts and relations, 8 held-out prompts of each of the four;
    "headline" = the held-out plain prompts of the four families that `texforce world ceiling` measured the headroom
    on (16 each), as an evaluation set (`prompts.eval`: its prompts are its `train` part, as a file's are)."""

    def build() -> PromptSet:
        from texforce.world.scenes import family_prompts, heldout_prompts, train_prompts

        if family == "headline":
            from texforce.world.headroom.ceiling import CeilingConfig
            from texforce.world.headroom.ceiling import heldout_prompts as ceiling_prompts

            prompts = tuple(ceiling_prompts(CeilingConfig())[0])
            return PromptSet("world_headline", prompts, prompts)
        if family is None:
            return PromptSet("world", tuple(train_prompts(16)), tuple(heldout_prompts(32)))
        if family == "all":
            train = [p for f in ("single", "count", "relation") for p in family_prompts(f, "train", 32)]
            families = ("single", "count", "relation", "composition")
            heldout = [p for f in families for p in family_prompts(f, "heldout", 8)]
            return PromptSet("world_all", tuple(train), tuple(heldout))
        train, heldout = family_prompts(family, "train", 32), family_prompts(family, "heldout", 32)
        return PromptSet(f"world_{family}", tuple(train), tuple(heldout))

    return build


PROMPT_SETS: dict[str, Callable[[], PromptSet]] = {
    "hand": _single("hand", "A photo of a hand"),
    "face": _single("face", "a complete face of a man", "a complete face of a woman"),
    "color": _single("color", "a green colored rabbit"),
    "count": _single("count", "Four wolves in the forest"),
    "comp": _single("comp", "A cat and a dog"),
    "location": _single("location", "A dog on the moon"),
    "animals": _animals,
    "world": _world(None),
    "world_all": _world("all"),
    "world_headline": _world("headline"),
    "world_single": _world("single"),
    "world_count": _world("count"),
    "world_relation": _world("relation"),
}


def load_prompt_file(path: str | Path) -> tuple[str, ...]:
    """Prompts from a file: .json (list of strings, or of objects with `prompt`/`text`), else one per line."""
    path = Path(path)
    if not path.is_file():
        raise TexforceError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TexforceError(f"prompt file {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        prompts = _prompts_from_json(text, path)
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise TexforceError(f"prompt file {path} holds no prompts")
    return tuple(prompts)


def _prompts_from_json(text: str, path: Path) -> list[str]:
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


def load_prompt_set(train: str, eval: str | None = None) -> PromptSet:
    """Resolve `train` (a built-in name or a file) and optionally a separate `eval` source."""
    base = _resolve(train)
    if eval is None:
        return base
    return PromptSet(base.name, base.train, _resolve(eval).train)


def check_prompt_source(source: str, key: str) -> None:
    """Fail early, naming the config key, if `source` is neither a built-in set nor an existing file."""
    if source not in PROMPT_SETS and not Path(source).is_file():
        raise TexforceError(
            f"{key}: {source!r} is neither a prompt file nor a built-in set ({', '.join(sorted(PROMPT_SETS))})"
        )


def _resolve(source: str) -> PromptSet:
    if source in PROMPT_SETS:
        return PROMPT_SETS[source]()
    if Path(source).suffix or Path(source).exists():
        prompts = load_prompt_file(source)
        return PromptSet(Path(source).stem, prompts, prompts)
    raise TexforceError(
        f"unknown prompt set {source!r}: not a file, and valid built-in sets are {', '.join(sorted(PROMPT_SETS))}"
    )


__all__ = [
    "ANIMALS",
    "PROMPT_SETS",
    "PromptSet",
    "check_prompt_source",
    "load_prompt_file",
    "load_prompt_set",
]
