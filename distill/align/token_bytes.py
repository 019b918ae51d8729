"""The UTF-8 bytes each token id stands for, read from a fast tokenizer's vocabulary and decoder.

Cross-tokenizer alignment needs byte offsets for token ids that were never produced by tokenising a text (a
student's on-policy rollout, say), so offsets come from the vocabulary, not from `return_offsets_mapping`:

- byte-level BPE (GPT-2, Llama-3, Qwen): every piece is a string over the 256-symbol byte alphabet (`Ġ` = space);
- SentencePiece style (Metaspace `▁` for space, optional `<0xNN>` byte fallback): Llama-2, Mistral, Gemma, T5;
- special tokens (BOS, EOS, chat markers) cover no bytes of the text: they are zero-width.

A decoder that cannot be mapped back to bytes (e.g. WordPiece `##`) raises `UnsupportedTokenizerError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class UnsupportedTokenizerError(ValueError):
    """The tokenizer's pieces cannot be mapped back to the bytes of the text they cover."""


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's `bytes_to_unicode`: printable stand-in character -> byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@dataclass(frozen=True)
class _Scheme:
    """How pieces turn into bytes: byte-level alphabet, or text with replacements and byte fallback."""

    byte_level: bool
    replacements: tuple[tuple[str, str], ...] = ()
    byte_fallback: bool = False
    strip_first: int = 0  # leading spaces the decoder strips from the first token of a sequence


def _decoder_scheme(tokenizer) -> _Scheme:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    name = type(tokenizer).__name__
    if backend is None:
        raise UnsupportedTokenizerError(
            f"{name} is not a fast tokenizer: byte offsets need a `tokenizers`-backed (fast) tokenizer"
        )
    spec = json.loads(backend.to_str())
    decoder = spec.get("decoder") or {}
    steps = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    kinds = [s.get("type") for s in steps]
    if "ByteLevel" in kinds:
        return _Scheme(byte_level=True)
    replacements: list[tuple[str, str]] = []
    byte_fallback = False
    strip_first = 0
    for step in steps:
        kind = step.get("type")
        if kind == "Metaspace":
            replacements.append((step.get("replacement", "▁"), " "))
            if step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True):
                strip_first = 1
        elif kind == "Replace":
            pattern = step.get("pattern", {})
            if "String" not in pattern:
                raise UnsupportedTokenizerError(f"{name}: regex Replace decoders are not supported")
            replacements.append((pattern["String"], step.get("content", "")))
        elif kind == "ByteFallback":
            byte_fallback = True
        elif kind == "Strip":
            if step.get("start", 0) and step.get("content", " ") == " ":
                strip_first = int(step["start"])
        elif kind == "Fuse":
            continue
        else:
            raise UnsupportedTokenizerError(
                f"{name}: decoder {kind!r} cannot be mapped back to bytes (supported: ByteLevel, Metaspace, "
                "Replace/ByteFallback/Fuse/Strip sequences)"
            )
    if not replacements and not byte_fallback:
        raise UnsupportedTokenizerError(f"{name}: decoder {decoder.get('type')!r} gives no byte mapping")
    return _Scheme(False, tuple(replacements), byte_fallback, strip_first)


def _piece_bytes(piece: str, scheme: _Scheme) -> bytes:
    if scheme.byte_level:
        table = _byte_level_decoder()
        try:
            return bytes(table[c] for c in piece)
        except KeyError:  # an added (non byte-level) token stored as plain text
            return piece.encode("utf-8")
    if scheme.byte_fallback and (m := _BYTE_FALLBACK.match(piece)):
        return bytes([int(m.group(1), 16)])
    for old, new in scheme.replacements:
        piece = piece.replace(old, new)
    return piece.encode("utf-8")


class TokenBytes:
    """Per-id byte strings of one tokenizer, built once.

    `pieces[i]` are the bytes of token i; special tokens are zero-width (`b""`). `offsets(ids)` returns the
    `[n, 2]` byte spans of a sequence in the text it decodes to, with the decoder's strip of a leading space
    (SentencePiece prefix space) applied to the first non-special token.
    """

    def __init__(self, tokenizer) -> None:
        self.scheme = _decoder_scheme(tokenizer)
        vocab = tokenizer.get_vocab()
        size = max(len(tokenizer), max(vocab.values()) + 1)
        special_ids = set(getattr(tokenizer, "all_special_ids", []))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special_ids |= {i for i, tok in added.items() if getattr(tok, "special", False)}
        added_plain = {i: tok.content for i, tok in added.items() if not getattr(tok, "special", False)}
        pieces: list[bytes] = [b""] * size
        self.fallback_ids: set[int] = set()
        for piece, i in vocab.items():
            if i in special_ids:
                continue
            pieces[i] = added_plain[i].encode("utf-8") if i in added_plain else _piece_bytes(piece, self.scheme)
            if self.scheme.byte_fallback and _BYTE_FALLBACK.match(piece):
                self.fallback_ids.add(i)
        self.pieces = pieces
        self.special = np.zeros(size, dtype=bool)
        self.special[list(special_ids)] = True
        self.lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=size)

    def __len__(self) -> int:
        return len(self.pieces)

    def sequence(self, ids, continuation: bool = False) -> tuple[bytes, np.ndarray]:
        """The decoded bytes of `ids` and each token's `[start, end)` byte span in them: shapes `[n, 2]`.

        `continuation=True` reads `ids` as the continuation of earlier text (a completion after its prompt): the
        decoder's strip of a leading space, which only applies at the start of a text, is not applied.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.pieces)):
            bad = int(ids[(ids < 0) | (ids >= len(self.pieces))][0])
            raise ValueError(f"token id {bad} is outside the tokenizer's vocabulary of {len(self.pieces)}")
        lengths = self.lengths[ids].copy()
        chunks = [self.pieces[i] for i in ids.tolist()]
        if self.scheme.strip_first and not continuation:
            content = np.flatnonzero(lengths > 0)
            if content.size:
                k = int(content[0])
                strip = min(len(chunks[k]) - len(chunks[k].lstrip(b" ")), self.scheme.strip_first)
                chunks[k] = chunks[k][strip:]
                lengths[k] -= strip
        ends = np.cumsum(lengths)
        return b"".join(chunks), np.stack([ends - lengths, ends], axis=-1)

    def decode(self, ids, continuation: bool = False) -> str:
        """The text of `ids` (special tokens dropped); bytes of a character cut at the end become U+FFFD."""
        return self.sequence(ids, continuation)[0].decode("utf-8", errors="replace")
