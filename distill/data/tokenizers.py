"""Tiny, fast-to-train tokenizers for tests and demos of cross-tokenizer distillation.

Two deliberately different families are provided, mirroring real teacher/student pairs:

* :func:`train_byte_level_bpe` -- GPT-2 / Qwen style byte-level BPE (every byte is in the alphabet).
* :func:`train_metaspace_unigram` -- SentencePiece / Llama style Unigram with ``▁`` word boundaries and
  ``<0xNN>`` byte fallback.

Both split digits individually so arithmetic-style demo tasks stay learnable. :func:`save_tokenizer` writes a
folder that ``AutoTokenizer.from_pretrained`` reloads faithfully even when a ``config.json`` of another model
family sits beside it (see its docstring for the transformers 5 pitfall it works around).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

__all__ = [
    "load_tokenizer",
    "sample_corpus",
    "save_tokenizer",
    "train_byte_level_bpe",
    "train_metaspace_unigram",
]

METASPACE = "▁"
BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))


def train_byte_level_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = ("<|endoftext|>", "<|pad|>"),
) -> PreTrainedTokenizerFast:
    """Train a GPT-2/Qwen style byte-level BPE tokenizer.

    The initial alphabet holds all 256 byte symbols, so any text (emoji, CJK, control characters) encodes
    without an unknown token. Digits are split individually *before* the byte-level mapping (after it, some
    UTF-8 continuation bytes map to numeric-looking symbols such as ``²`` and would be split too). No BOS
    token is added; ``eos_token`` is ``"<|endoftext|>"`` and ``pad_token`` is ``"<|pad|>"``.
    """
    specials = list(dict.fromkeys([*special_tokens, "<|endoftext|>", "<|pad|>"]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


def train_metaspace_unigram(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = ("<s>", "</s>", "<pad>", "<unk>"),
) -> PreTrainedTokenizerFast:
    """Train a SentencePiece/Llama style Unigram tokenizer with Metaspace and byte fallback.

    ``vocab_size`` counts everything: the special tokens, the 256 ``<0xNN>`` byte-fallback pieces (placed right
    after the special tokens, as SentencePiece does) and the learned pieces. Characters never seen in training
    (e.g. emoji) are encoded as their UTF-8 bytes and decode back exactly. ``"<s>"`` is prepended to every
    encoding by a ``TemplateProcessing`` post-processor (skip it with ``add_special_tokens=False``).

    As with SentencePiece, leading spaces of a text are not preserved by decoding (the Metaspace decoder strips
    the one space it assumes it prepended).
    """
    specials = list(dict.fromkeys([*special_tokens, "<s>", "</s>", "<pad>", "<unk>"]))
    if vocab_size <= len(specials) + len(BYTE_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(specials) + len(BYTE_TOKENS)} (specials + 256 byte tokens)")
    texts = list(texts)  # iterated twice: training, then deterministic re-scoring
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS), special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    trained = [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"] if piece not in specials]
    vocab = _with_byte_fallback(specials, trained)
    tok.model = models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=True)

    # The Rust trainer walks a randomly seeded HashMap, so piece order (ids) and the last digits of the scores change
    # from one process to the next (the piece set and the segmentations do not). Re-score every piece from its count
    # in the Viterbi segmentation of the corpus and order pieces by (count desc, piece) so ids are reproducible.
    counts = Counter(t for enc in tok.encode_batch(texts, add_special_tokens=False) for t in enc.tokens)
    pieces = sorted((p for p, _ in trained), key=lambda p: (-counts[p], p))
    total = sum(counts[p] + 0.5 for p in pieces)
    vocab = _with_byte_fallback(specials, [(p, math.log((counts[p] + 0.5) / total)) for p in pieces])
    tok.model = models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=True)

    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", specials.index("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _with_byte_fallback(specials: list[str], learned: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Unigram vocabulary: specials (score 0), the 256 ``<0xNN>`` pieces, then ``learned`` (bytes removed).

    Byte pieces score 10 nats below the worst learned piece, so they only cover what nothing else can.
    """
    learned = [(p, s) for p, s in learned if p not in BYTE_TOKENS and p not in specials]
    floor = min((s for _, s in learned), default=0.0) - 10.0
    return [(p, 0.0) for p in specials] + [(b, floor) for b in BYTE_TOKENS] + learned


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Save ``tokenizer`` to the folder ``path`` as a plain ``PreTrainedTokenizerFast`` (``tokenizer.json`` + config).

    Unset special tokens are written as ``null`` so a model class cannot substitute its own defaults. Whether
    ``AutoTokenizer`` then loads it faithfully also depends on the model ``config.json`` beside it: see
    :func:`check_round_trip`.
    """
    path = Path(path)
    tokenizer.save_pretrained(path)
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        cfg.setdefault(key, None)
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


class TokenizerRoundTripError(RuntimeError):
    """``AutoTokenizer.from_pretrained`` on a saved folder does not give back the tokenizer that was saved."""


ROUND_TRIP_PROBE = "Hi  there\tQwen!\nNew line 🙂👍🏽 你好，世界 x=3.14 e\u0301 (42)\n\n  end "


def check_round_trip(tokenizer: PreTrainedTokenizerFast, path: str | Path, probe: str = ROUND_TRIP_PROBE) -> None:
    """Load ``path`` through ``AutoTokenizer`` and require the same ids as ``tokenizer`` on ``probe``.

    transformers 5.x picks the tokenizer class from a ``config.json``'s ``model_type`` and, for some families
    (``qwen2`` is listed in ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``), rebuilds the backend from the
    vocabulary with the family's own pre-tokenizer, normalizer and decoder, ignoring ``tokenizer_class``: a
    Metaspace Unigram saved beside a qwen2 config comes back dropping every space. There is no per-folder switch
    that fixes this without enabling ``trust_remote_code``, which we never write; so we check, and refuse.
    """
    loaded = AutoTokenizer.from_pretrained(str(path))
    for add_special in (False, True):
        want = tokenizer.encode(probe, add_special_tokens=add_special)
        got = loaded.encode(probe, add_special_tokens=add_special)
        if got != want:
            config = Path(path) / "config.json"
            family = json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.exists() else None
            raise TokenizerRoundTripError(
                f"{path}: AutoTokenizer loads this tokenizer as {type(loaded).__name__} and changes its ids "
                f"(model_type {family!r} beside it): first tokens {got[:8]} instead of {want[:8]}. Save the model "
                "with another model family (e.g. llama) or use that family's own tokenizer."
            )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder through ``AutoTokenizer`` (the same path users and `pipeline` take)."""
    return AutoTokenizer.from_pretrained(str(path))


_WORD_TEXT = """
the a an and or but if then else when while for with without from into over under about after before this that
these those model teacher student token tokens text word words sentence language learning distillation loss
logits probability vocabulary alignment sequence batch training inference answer question number numbers sum
product reads writes predicts explains counts compresses translates learns computes returns prints matches
small large quick slow bright dark happy careful simple hard new old first last next every each some many few
cat dog bird river mountain city house book table window garden music coffee morning evening friend people is
are was were be been has have had do does did can could will would should may might must not very also
"""
_WORDS = tuple(_WORD_TEXT.split())
_NAMES = ("Alice", "Bob", "Carol", "Dave", "Eve", "Qwen", "Llama", "Python", "Monday", "Paris", "London", "Tokyo")
_CODE = (
    "def {f}({a}):\n    return {a} + {n}\n",
    "for i in range({n}):\n\tprint(i, {a})\n",
    "if {a} >= {n}:\n    {a} = {a} - {n}\nelse:\n    pass\n",
    "class {F}:\n    def __init__(self, {a}: int = {n}) -> None:\n        self.{a} = [{a}, {n}]\n",
    "{a} = {{'key': {n}, \"value\": '{f}'}}  # comment: {f}!\n",
)
_CJK = (
    "你好，世界",
    "我们学习语言模型。",
    "今天天气很好",
    "こんにちは世界",
    "知識の蒸留",
    "한국어 문장입니다",
    "数学题：一加一",
)
_EMOJI = ("🙂", "👍", "🚀", "🎉", "❤️", "🤖", "😂")


def sample_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Return a small deterministic multilingual corpus: prose, Python-like code, arithmetic, whitespace, CJK, emoji.

    Around 30 KB by default, enough to train the ~600-piece tokenizers used in tests in a fraction of a second.
    """
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(n_lines):
        kind = i % 6
        words = rng.sample(_WORDS, rng.randint(4, 12))
        if kind == 0:
            lines.append(f"{rng.choice(_NAMES)} {' '.join(words)}{rng.choice('.!?,;:')}")
        elif kind == 1:
            f, a = rng.choice(words), rng.choice(("x", "text", "ids", "value"))
            lines.append(rng.choice(_CODE).format(f=f, F=f.capitalize(), a=a, n=rng.randint(0, 999)))
        elif kind == 2:
            a, b = rng.randint(0, 9999), rng.randint(0, 999)
            lines.append(f"Q: {a} + {b} = ? A: {a + b}. {a} * {b % 10} = {a * (b % 10)}; {a / max(b, 1):.3f}")
        elif kind == 3:
            sep = rng.choice(("  ", "\t", "\n", " \n ", "\t\t", "\n\n", "   "))
            lines.append(sep.join(w.upper() if rng.random() < 0.2 else w for w in words))
        elif kind == 4:
            lines.append(f"{rng.choice(_CJK)} {words[0]} {rng.randint(1, 12)} {rng.choice(_CJK)}")
        else:
            lines.append(f"{rng.choice(_NAMES)} {' '.join(words[:4])} {rng.choice(_EMOJI)} ({rng.choice(_CJK)})")
    return lines
