"""Prompt sets: built-in ones (the TexForce paper's tasks, DDPO's animals) and files (benchmarks' too: `files`).

A `PromptSet` keeps training prompts and held-out evaluation prompts apart. Single-prompt tasks
evaluate on their own prompt with fresh seeds, as the paper does; `animals` holds out every fifth animal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from texforce.errors import TexforceError
from texforce.prompts.files import read_prompts, split_source

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


def load_prompt_file(source: str | Path) -> tuple[str, ...]:
    """Prompts from a file, `FILE:Column=Value` filters allowed: one per line (T2I-CompBench), a JSON list, or a
    benchmark's table as published (PartiPrompts TSV, DrawBench CSV, GenEval JSONL; `prompts.files`)."""
    return tuple(read_prompts(*split_source(str(source))))


def load_prompt_set(train: str, eval: str | None = None) -> PromptSet:
    """Resolve `train` (a built-in name or a file) and optionally a separate `eval` source."""
    base = _resolve(train)
    if eval is None:
        return base
    return PromptSet(base.name, base.train, _resolve(eval).train)


def check_prompt_source(source: str, key: str) -> None:
    """Fail early, naming the config key, if `source` is neither a built-in set nor an existing file."""
    if source not in PROMPT_SETS and not split_source(source)[0].is_file():
        raise TexforceError(
            f"{key}: {source!r} is neither a prompt file nor a built-in set ({', '.join(sorted(PROMPT_SETS))})"
        )


def _resolve(source: str) -> PromptSet:
    if source in PROMPT_SETS:
        return PROMPT_SETS[source]()
    path, _ = split_source(source)
    if path.suffix or path.exists():
        prompts = load_prompt_file(source)
        return PromptSet(path.stem, prompts, prompts)
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
