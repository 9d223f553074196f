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

from transformers import CLIPTokenizer, T5Tokenizer

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


T5_VOCAB_SIZE = 32_128  # the rows of T5's embedding (32,000 pieces + 100 sentinels, padded to a multiple of 128)
_T5_PIECES = 32_000  # T5's SentencePiece vocabulary, specials included; its 100 sentinels follow


@lru_cache(maxsize=1)
def _t5_standin_pieces() -> tuple[tuple[str, float], ...]:
    """32,000 SentencePiece-style pieces with Unigram scores: T5's three specials at ids 0-2, "▁", every printable
    ASCII character alone and word-initial, then CLIP's merges in CLIP's (frequency) order, a word-final CLIP token
    `cat</w>` becoming the word-initial piece `▁cat`. The scores make the Unigram model cut text into the fewest
    pieces (single characters only where nothing longer fits), ties going to the more frequent piece."""
    pieces = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -20.0}
    for char in map(chr, range(ord("!"), ord("~") + 1)):
        pieces.setdefault(char, -20.0)
        pieces.setdefault("▁" + char, -20.0)
    _, merges = load_clip_vocab()
    for rank, (left, right) in enumerate(merges):
        text = (left + right).removesuffix("</w>")
        piece = "▁" + text if right.endswith("</w>") else text
        if text.isascii() and text.isprintable() and " " not in text and piece not in pieces:
            pieces[piece] = -10.0 - rank / NUM_MERGES
            if len(pieces) == _T5_PIECES:
                break
    sentinels = {f"<extra_id_{i}>": 0.0 for i in reversed(range(100))}  # as in T5: <extra_id_0> is the last id
    return tuple({**pieces, **sentinels}.items())


def build_t5_standin_tokenizer(model_max_length: int = 512) -> T5Tokenizer:
    """An offline stand-in for T5's tokenizer, for the random-weight SD3 and FLUX built-ins only (real models load
    their own `tokenizer_3` / `tokenizer_2`): T5's SentencePiece model cannot be shipped or downloaded here.

    It is a real `T5TokenizerFast` (Unigram) with T5's special ids — `<pad>` 0, `</s>` 1, `<unk>` 2 — and T5's
    behaviour: `</s>` after each text (kept when truncating), padding on the right with id 0, `<extra_id_N>`
    sentinels at 32,000-32,099; every id is below T5's 32,128 embedding rows. Its pieces are CLIP's merges (see
    `_t5_standin_pieces`), so prompts cut into words and common subwords much as T5's do, but the ids are not T5's.
    """
    return T5Tokenizer(vocab=list(_t5_standin_pieces()), extra_ids=100, model_max_length=model_max_length)
