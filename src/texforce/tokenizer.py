"""The real CLIP BPE tokenizer, built offline from a file shipped with the package.

`assets/clip_bpe_merges.txt.gz` is the first 48,895 lines (header + 48,894 merges) of
`open_clip/bpe_simple_vocab_16e6.txt.gz` from the open_clip_torch 3.3.0 wheel on PyPI (MIT licence),
which is every merge CLIP uses. From it the vocabulary is derived exactly as CLIP derives it:
256 byte symbols, the same with an end-of-word marker, one token per merge, then the two specials,
49,408 tokens in all — the vocabulary of `openai/clip-vit-large-patch14`.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

from transformers import CLIPTokenizer

_MERGES_FILE = "clip_bpe_merges.txt.gz"
NUM_MERGES = 48_894
VOCAB_SIZE = 49_408


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes, in CLIP's order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols = [chr(b) for b in printable]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


@lru_cache(maxsize=1)
def load_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return CLIP's `(vocab, merges)` built from the shipped merges file."""
    raw = resources.files("texforce.assets").joinpath(_MERGES_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    if len(merges) != NUM_MERGES:
        raise RuntimeError(f"{_MERGES_FILE} is truncated: {len(merges)} merges, expected {NUM_MERGES}")
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, [tuple(m.split()) for m in merges]


def build_clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A `CLIPTokenizer` identical to openai/clip-vit-large-patch14's, built without any download. With
    `pad_token="!"` it is OpenCLIP's (SDXL's `tokenizer_2`): the same vocabulary, padded with id 0."""
    vocab, merges = load_clip_vocab()
    return CLIPTokenizer(
        vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length, pad_token=pad_token
    )
