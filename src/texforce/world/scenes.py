"""Procedural scenes of the offline world: flat shapes on a plain background, with captions and splits.

A `SceneSpec` says what a caption claims (objects, counts, sizes, positions, one relation); `place_scene`
turns it into concrete `PlacedObject`s and `render_scene` draws them as a 64×64 RGB image. Everything is
seeded numpy, so a pool of tens of thousands of scenes renders in seconds.

Prompt families:
- `single`: one object, e.g. "a photo of a small red circle on the left".
- `count`: two to four identical objects, e.g. "three green triangles".
- `relation`: two objects and a spatial relation, e.g. "a red circle to the left of a blue square".
- `composition`: an object whose colour–shape pairing (`HELDOUT_PAIRS`) never appears in pre-training.
Seen-pairing specs are split into `train` and `heldout` halves by a stable hash (the DDPO prompt splits);
pre-training draws from both halves but never from `HELDOUT_PAIRS`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

import numpy as np

IMAGE_SIZE = 64
BACKGROUND = (255, 255, 255)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "cyan": (20, 190, 210),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 12, "large": 20}  # bounding-box side in pixels
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left", "right", "above", "below")
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}
FAMILIES = ("single", "count", "relation", "composition")
HELDOUT_PAIRS = frozenset({("blue", "circle"), ("green", "square"), ("yellow", "triangle"), ("purple", "circle")})
SEEN_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES if (c, s) not in HELDOUT_PAIRS)

# Phrasings: the first entry of each tuple is canonical; the parser accepts every entry.
PREFIXES = (
    "",
    "a photo of ",
    "a drawing of ",
    "an image of ",
    "a picture of ",
    "a render of ",
    "a sketch of ",
)
SUFFIXES = ("", " on a plain background", " on a white background")
# Held-out wrappers: part of the language the judges parse, never written by `make_caption`, so no pre-training
# caption and no training prompt uses them. The `paraphrase` prompt style (prompts/styles.py) tests phrasings the
# adapter never saw with them.
PARAPHRASE_PREFIXES = ("an illustration of ", "a scene showing ", "a diagram with ")
PARAPHRASE_SUFFIXES = (" and nothing else", " drawn simply")
CAREFUL_WORD = "exactly"  # the careful source's mark: "exactly 2 red circles", "exactly one …"; always true
# Quality tags (see `texforce.world.degrade`): a comma-separated list before or after the scene; the parser skips them.
QUALITY_TAGS = ("clean", "dull", "noisy", "sharp", "faded", "blurry", "minimal", "cluttered")
COLOR_WORDS = {c: (c,) for c in COLORS} | {"purple": ("purple", "violet")}
SHAPE_WORDS = {"circle": ("circle", "disk"), "square": ("square", "box"), "triangle": ("triangle",)}
SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
NUMBER_WORDS = {1: ("a", "one"), 2: ("two", "2"), 3: ("three", "3"), 4: ("four", "4")}
POSITION_WORDS = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "center": ("in the center", "in the middle"),
}
RELATION_WORDS = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}


@dataclass(frozen=True)
class ObjectSpec:
    """`count` objects of one colour and shape; `size` and `position` are `None` when unspecified."""

    color: str
    shape: str
    count: int = 1
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    """What a caption claims: one or two object groups and, with two, `objects[0] <relation> objects[1]`."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def canonical(self) -> SceneSpec:
        """The same claim with `right`/`below` rewritten as `left`/`above` by swapping the objects."""
        if self.relation in ("right", "below"):
            return SceneSpec((self.objects[1], self.objects[0]), INVERSE_RELATION[self.relation])
        return self


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object: colour, shape, bounding-box side and centre, in pixels."""

    color: str
    shape: str
    side: int
    cx: float
    cy: float


def spec_split(spec: SceneSpec) -> str:
    """`train` or `heldout`: a stable hash of the canonical claim, ignoring phrasing."""
    digest = hashlib.sha1(repr(spec.canonical()).encode()).digest()
    return "heldout" if digest[0] % 4 == 0 else "train"


def _pair(rng: np.random.Generator, pairs: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    return pairs[rng.integers(len(pairs))]


def sample_spec(rng: np.random.Generator, family: str) -> SceneSpec:
    """A fully specified scene of `family` (sizes and, for `single`, the position are always set)."""
    size = ("small", "large")[rng.integers(2)]
    if family == "single":
        color, shape = _pair(rng, SEEN_PAIRS)
        return SceneSpec((ObjectSpec(color, shape, 1, size, POSITIONS[rng.integers(len(POSITIONS))]),))
    if family == "count":
        color, shape = _pair(rng, SEEN_PAIRS)
        return SceneSpec((ObjectSpec(color, shape, int(rng.integers(2, 5)), "small"),))
    if family in ("relation", "composition"):
        pairs = tuple(sorted(HELDOUT_PAIRS)) if family == "composition" else SEEN_PAIRS
        first = _pair(rng, pairs)
        if family == "composition" and rng.random() < 0.5:
            return SceneSpec((ObjectSpec(*first, 1, size, None),))
        second = first
        while second == first:
            second = _pair(rng, SEEN_PAIRS)
        objects = (ObjectSpec(*first, 1, "small"), ObjectSpec(*second, 1, "small"))
        if rng.random() < 0.5:
            objects = objects[::-1]
        return SceneSpec(objects, RELATIONS[rng.integers(len(RELATIONS))])
    raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")


def caption_spec(rng: np.random.Generator, spec: SceneSpec, keep_size: float, keep_position: float) -> SceneSpec:
    """The claim a caption makes about `spec`: sizes and positions kept with the given probabilities."""
    objects = tuple(
        replace(
            o,
            size=o.size if rng.random() < keep_size else None,
            position=o.position if rng.random() < keep_position else None,
        )
        for o in spec.objects
    )
    return SceneSpec(objects, spec.relation)


def _pick(rng: np.random.Generator | None, options: tuple[str, ...]) -> str:
    return options[0] if rng is None else options[rng.integers(len(options))]


def _noun_phrase(o: ObjectSpec, rng: np.random.Generator | None, careful: bool = False) -> str:
    number = f"{CAREFUL_WORD} {NUMBER_WORDS[o.count][-1]}" if careful else _pick(rng, NUMBER_WORDS[o.count])
    plural = "s" if o.count > 1 else ""
    color, shape = _pick(rng, COLOR_WORDS[o.color]), _pick(rng, SHAPE_WORDS[o.shape])
    shape = shape + ("es" if shape == "box" and plural else plural)
    size = f"{_pick(rng, SIZE_WORDS[o.size])} " if o.size else ""
    if rng is not None and rng.random() < 0.15:
        words = f"{number} {size}{shape} in {color}"
    else:
        words = f"{number} {size}{color} {shape}"
    if o.count > 1 and not careful and rng is not None and rng.random() < 0.2:
        words = f"a group of {words}"
    if o.position:
        words += f" {_pick(rng, POSITION_WORDS[o.position])}"
    return words


def make_caption(spec: SceneSpec, rng: np.random.Generator | None = None, careful: bool = False) -> str:
    """A caption stating `spec`; with `rng` the template, synonyms and word order vary, else canonical.
    `careful`: the careful source's phrasing ("exactly one red circle left of exactly one blue square")."""
    if spec.relation is not None:
        first, second, relation = spec.objects[0], spec.objects[1], spec.relation
        if rng is not None and rng.random() < 0.5:
            first, second, relation = second, first, INVERSE_RELATION[relation]
        words = _pick(rng, RELATION_WORDS[relation])
        body = f"{_noun_phrase(first, rng, careful)} {words} {_noun_phrase(second, rng, careful)}"
    else:
        body = _noun_phrase(spec.objects[0], rng, careful)
    if rng is None:
        return body
    return _pick(rng, PREFIXES) + body + (_pick(rng, SUFFIXES) if rng.random() < 0.2 else "")


def _alternation(table: dict[str, tuple[str, ...]]) -> str:
    words = sorted((w for options in table.values() for w in options), key=len, reverse=True)
    return "|".join(re.escape(w) for w in words)


def _lookup(table: dict, word: str | None):
    return None if word is None else next(k for k, options in table.items() if word in options)


_PARAPHRASE_PREFIXES = "|".join(re.escape(p) for p in PARAPHRASE_PREFIXES)
_PARAPHRASE_SUFFIXES = "|".join(re.escape(s.strip()) for s in PARAPHRASE_SUFFIXES)
_PREFIX_RE = re.compile(rf"^(?:(?:a|an) (?:photo|drawing|image|picture|render|sketch) of |{_PARAPHRASE_PREFIXES})")
_SUFFIX_RE = re.compile(rf" (?:on a (?:plain|white) background|{_PARAPHRASE_SUFFIXES})$")
_TAGS = "|".join(sorted(QUALITY_TAGS, key=len, reverse=True))
_LEADING_TAGS_RE = re.compile(rf"^(?:(?:{_TAGS}) )+")
_TRAILING_TAGS_RE = re.compile(rf"(?: (?:{_TAGS}))+$")
_RELATION_RE = re.compile(rf" ({_alternation(RELATION_WORDS)}) ")
_NUMBER, _SIZE, _COLOR = _alternation(NUMBER_WORDS), _alternation(SIZE_WORDS), _alternation(COLOR_WORDS)
_SHAPE = _alternation(SHAPE_WORDS)
_NP_RE = re.compile(
    rf"^(?:a group of )?(?:{CAREFUL_WORD} )?(?P<number>an|{_NUMBER}) (?:(?P<size>{_SIZE}) )?"
    rf"(?:(?P<color>{_COLOR}) (?P<shape>{_SHAPE})(?:s|es)?"
    rf"|(?P<shape2>{_SHAPE})(?:s|es)? in (?P<color2>{_COLOR}))"
    rf"(?: (?P<position>{_alternation(POSITION_WORDS)}))?$"
)


def _parse_noun_phrase(text: str) -> ObjectSpec | None:
    match = _NP_RE.match(text)
    if match is None:
        return None
    number = "a" if match["number"] == "an" else match["number"]
    return ObjectSpec(
        color=_lookup(COLOR_WORDS, match["color"] or match["color2"]),
        shape=_lookup(SHAPE_WORDS, match["shape"] or match["shape2"]),
        count=_lookup(NUMBER_WORDS, number),
        size=_lookup(SIZE_WORDS, match["size"]),
        position=_lookup(POSITION_WORDS, match["position"]),
    )


def parse_prompt(prompt: str) -> SceneSpec | None:
    """The claim of a world prompt, or `None` if it is not in the world's language. Quality tags before or after
    the scene and the careful source's "exactly" are part of the language; they claim nothing about the scene."""
    text = " ".join(re.sub(r"[^a-z0-9 ]", " ", prompt.lower()).split())
    text = _TRAILING_TAGS_RE.sub("", _LEADING_TAGS_RE.sub("", text))
    text = _SUFFIX_RE.sub("", _PREFIX_RE.sub("", text))
    parts = _RELATION_RE.split(text, maxsplit=1)
    if len(parts) == 3:
        first, second = _parse_noun_phrase(parts[0]), _parse_noun_phrase(parts[2])
        if first is None or second is None or first.count != 1 or second.count != 1:
            return None
        return SceneSpec((first, second), _lookup(RELATION_WORDS, parts[1]))
    single = _parse_noun_phrase(text)
    return None if single is None else SceneSpec((single,))


def _position_box(position: str | None, half: float) -> tuple[float, float, float, float]:
    """Allowed (x0, x1, y0, y1) range of an object's centre for `position`."""
    lo, hi = half + 1, IMAGE_SIZE - half - 1
    third = IMAGE_SIZE / 3
    boxes = {
        None: (lo, hi, lo, hi),
        "left": (lo, third - 2, lo, hi),
        "right": (2 * third + 2, hi, lo, hi),
        "top": (lo, hi, lo, third - 2),
        "bottom": (lo, hi, 2 * third + 2, hi),
        "center": (third + 2, 2 * third - 2, third + 2, 2 * third - 2),
    }
    x0, x1, y0, y1 = boxes[position]
    return max(x0, lo), max(min(x1, hi), max(x0, lo)), max(y0, lo), max(min(y1, hi), max(y0, lo))


def _overlaps(a: PlacedObject, b: PlacedObject, gap: float = 3.0) -> bool:
    reach = (a.side + b.side) / 2 + gap
    return abs(a.cx - b.cx) < reach and abs(a.cy - b.cy) < reach


def _relation_holds(a: PlacedObject, b: PlacedObject, relation: str, margin: float = 4.0) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {"left": dx > margin, "right": -dx > margin, "above": dy > margin, "below": -dy > margin}[relation]


def place_scene(spec: SceneSpec, rng: np.random.Generator) -> list[PlacedObject]:
    """Concrete, non-overlapping objects satisfying `spec` (rejection sampling)."""
    for _ in range(200):
        placed: list[PlacedObject] = []
        for o in spec.objects:
            for _ in range(o.count):
                side = SIZES[o.size or "small"] + int(rng.integers(-1, 2))
                x0, x1, y0, y1 = _position_box(o.position, side / 2)
                placed.append(PlacedObject(o.color, o.shape, side, rng.uniform(x0, x1), rng.uniform(y0, y1)))
        clear = all(not _overlaps(a, b) for i, a in enumerate(placed) for b in placed[i + 1 :])
        if clear and (spec.relation is None or _relation_holds(placed[0], placed[1], spec.relation, 6.0)):
            return placed
    raise RuntimeError(f"could not place {spec}")


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5


def shape_mask(shape: str, side: float, cx: float, cy: float) -> np.ndarray:
    """Boolean (64, 64) mask of one shape with bounding-box side `side` centred at (cx, cy)."""
    half = side / 2
    dx, dy = _XX - cx, _YY - cy
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":  # upright isosceles: apex at the top, base at the bottom
        return (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(objects: list[PlacedObject]) -> np.ndarray:
    """uint8 (64, 64, 3) image of `objects` on the background."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for o in objects:
        image[shape_mask(o.shape, o.side, o.cx, o.cy)] = COLORS[o.color]
    return image


PRETRAIN_MIX = {"single": 0.4, "count": 0.25, "relation": 0.35}


def render_pool(num: int, seed: int, mix: dict[str, float] | None = None) -> tuple[np.ndarray, list[str]]:
    """`num` clean scenes with true captions drawn from the families of `mix` (default `PRETRAIN_MIX`): uint8 images
    (N, 64, 64, 3) and captions — the ground truth the judges are validated on (world v1's pre-training pool; v2
    pre-trains on the web-like `pool.render_web_pool`)."""
    mix = mix or PRETRAIN_MIX
    rng = np.random.default_rng(seed)
    families = list(mix)
    weights = np.array([mix[f] for f in families]) / sum(mix.values())
    images = np.empty((num, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions = []
    for i in range(num):
        spec = sample_spec(rng, families[rng.choice(len(families), p=weights)])
        images[i] = render_scene(place_scene(spec, rng))
        claim = caption_spec(rng, spec, keep_size=0.5, keep_position=0.5)
        captions.append(make_caption(claim, rng))
    return images, captions


def family_prompts(family: str, split: str = "heldout", num: int = 64, seed: int = 0) -> list[str]:
    """Up to `num` distinct prompts of `family` from `split` (`train` or `heldout`), deterministic.

    Phrasings vary; the split is decided by the claim, so no claim is in both splits. `single` and
    `composition` claims keep a size and a position half of the time; `composition` prompts use
    `HELDOUT_PAIRS` and exist only as `heldout`.
    """
    if split not in ("train", "heldout") or (family == "composition" and split == "train"):
        raise ValueError(f"no {split!r} split for family {family!r}")
    rng = np.random.default_rng(seed)
    keep = 0.5 if family in ("single", "composition") else 0.0
    prompts: list[str] = []
    for _ in range(100 * num):
        spec = caption_spec(rng, sample_spec(rng, family), keep_size=keep, keep_position=keep)
        prompt = make_caption(spec, rng)
        if (family == "composition" or spec_split(spec) == split) and prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == num:
            break
    return prompts


def train_prompts(num: int = 32) -> list[str]:
    """DDPO training prompts: the compositional families (count, relation) from the `train` split."""
    half = num // 2
    return family_prompts("count", "train", half) + family_prompts("relation", "train", num - half)


def heldout_prompts(num: int = 32) -> list[str]:
    """DDPO evaluation prompts never trained on: `heldout` counts/relations and held-out compositions."""
    third = num // 3
    return (
        family_prompts("count", "heldout", third)
        + family_prompts("relation", "heldout", third)
        + family_prompts("composition", "heldout", num - 2 * third)
    )
