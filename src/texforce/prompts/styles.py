"""Prompt styles: the same request written the ways users write it, so an adapter is judged on each.

A style rewrites a prompt's text and keeps its claim: the judges score the styled image against the plain prompt
(what was asked for), and in the offline world `parse_prompt` reads every built-in style as the same scene. The
built-in styles are the world's: `plain`; `engineered`, the variant `texforce world ceiling` chose on training
prompts ("clean, sharp, minimal, " before the prompt); `tags_suffix` (the same tags after it); `one_tag` (a subset);
`careful` (the careful source's phrasing, "exactly one red circle"); `paraphrase` (wrappers no pre-training caption
and no training prompt ever used, `scenes.PARAPHRASE_PREFIXES`). Any other model takes a template such as
"{prompt}, highly detailed, 4k" as a style.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from texforce.errors import TexforceError
from texforce.world.headroom.prompt_engineering import PromptVariant
from texforce.world.scenes import PARAPHRASE_PREFIXES, PARAPHRASE_SUFFIXES, make_caption, parse_prompt

ENGINEERED_TAGS = ("clean", "sharp", "minimal")  # the ceiling's chosen variant (docs/world/ceiling.md)


@dataclass(frozen=True)
class PromptStyle:
    """A named way of writing a prompt: `apply(prompt)` is the text the model sees."""

    name: str
    description: str
    apply: Callable[[str], str]


def paraphrase(prompt: str) -> str:
    """The prompt's claim in a held-out wrapper (one per prompt, fixed by a hash of its text); prompts outside the
    world's language are returned unchanged."""
    spec = parse_prompt(prompt)
    if spec is None:
        return prompt
    wrappers = [(p, s) for p in PARAPHRASE_PREFIXES for s in ("", *PARAPHRASE_SUFFIXES)]
    prefix, suffix = wrappers[zlib.crc32(prompt.encode()) % len(wrappers)]
    return f"{prefix}{make_caption(spec)}{suffix}"


def _variant(variant: PromptVariant) -> Callable[[str], str]:
    return lambda prompt: variant.apply(prompt) if parse_prompt(prompt) is not None else prompt


STYLES: dict[str, PromptStyle] = {
    s.name: s
    for s in (
        PromptStyle("plain", "the prompt as written", lambda prompt: prompt),
        PromptStyle(
            "engineered",
            "quality tags before it: clean, sharp, minimal (the ceiling's choice)",
            _variant(PromptVariant(ENGINEERED_TAGS, "prefix")),
        ),
        PromptStyle("tags_suffix", "the same tags after it", _variant(PromptVariant(ENGINEERED_TAGS, "suffix"))),
        PromptStyle("one_tag", "one tag before it: sharp", _variant(PromptVariant(("sharp",), "prefix"))),
        PromptStyle(
            "careful", "the careful source's phrasing: exactly one red circle", _variant(PromptVariant(careful=True))
        ),
        PromptStyle("paraphrase", "held-out wrappers: an illustration of …, … and nothing else", paraphrase),
    )
}


def get_style(spec: str) -> PromptStyle:
    """A built-in style by name, or a template with `{prompt}` in it (its own name)."""
    if spec in STYLES:
        return STYLES[spec]
    if "{prompt}" in spec:
        return PromptStyle(spec, "template", lambda prompt: spec.replace("{prompt}", prompt))
    raise TexforceError(
        f"unknown prompt style {spec!r}: one of {', '.join(STYLES)}, or a template with {{prompt}} in it"
    )


def styled(prompts: Sequence[str], style: PromptStyle) -> list[str]:
    return [style.apply(prompt) for prompt in prompts]
