"""Byte-span alignment and the vocabulary map, on two genuinely different tokenizers.

Golden cases use tokenizers with hand-written vocabularies (so the expected groups can be checked by eye and do
not move when a trainer changes); property tests use the trained fixture tokenizers on arbitrary text.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from distill.align import AlignedGroups, TokenBytes, UnsupportedTokenizerError, VocabMap, align_spans


def _byte_level(merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    """Byte-level BPE (teacher): the 256 byte symbols plus the given merges; EOS '<|endoftext|>'."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _metaspace_unigram(pieces: list[str]) -> PreTrainedTokenizerFast:
    """SentencePiece-style Unigram (student) with byte fallback; BOS '<s>' prepended, EOS '</s>'."""
    specials = ["<unk>", "<s>", "</s>"]
    vocab = [(p, 0.0) for p in specials] + [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    vocab += [(p, -1.0 - 0.1 * len(p)) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def teacher() -> PreTrainedTokenizerFast:
    merges = [("H", "e"), ("l", "l"), ("He", "ll"), ("Hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"),
              ("l", "d"), ("Ġ", "4"), ("Ġ4", "2")]
    return _byte_level(merges)


@pytest.fixture(scope="module")
def student() -> PreTrainedTokenizerFast:
    return _metaspace_unigram(["▁Hel", "lo", "▁world", "▁wor", "ld", "你好", "，", "世界", "▁", "4", "2", "\n", "\t",
                               "ok", "▁4"])


def _groups(text: str, student, teacher, *, student_eos=False, teacher_eos=False):
    s_ids = student.encode(text) + ([student.eos_token_id] if student_eos else [])
    t_ids = teacher.encode(text) + ([teacher.eos_token_id] if teacher_eos else [])
    alignment = align_spans(s_ids, t_ids, student, teacher)
    s_tok, t_tok = student.convert_ids_to_tokens(s_ids), teacher.convert_ids_to_tokens(t_ids)
    return [(s_tok[s0:s1], t_tok[t0:t1]) for (s0, s1), (t0, t1) in alignment.ranges()]


def test_golden_words_bos_and_sub_word_splits(student, teacher):
    assert _groups("Hello world", student, teacher) == [
        (["<s>"], []),  # BOS on the student side only: a zero-width group of its own
        (["▁Hel", "lo"], ["Hello"]),  # the student's prefix space is the decoder's, not the text's
        (["▁world"], ["Ġwor", "ld"]),
    ]


def test_golden_emoji_cjk_digits_and_whitespace(student, teacher):
    assert _groups("Hello 🙂你好，世界 42\n\tok", student, teacher) == [
        (["<s>"], []),
        (["▁Hel", "lo"], ["Hello"]),
        (["▁"], ["Ġ"]),
        # the emoji: 4 byte-fallback tokens against the 4 byte symbols of the teacher, byte for byte
        (["<0xF0>"], ["ð"]),
        (["<0x9F>"], ["Ł"]),
        (["<0x99>"], ["Ļ"]),
        (["<0x82>"], ["Ĥ"]),
        # CJK: one student piece per word against the teacher's 3 bytes per character
        (["你好"], ["ä", "½", "ł", "å", "¥", "½"]),
        (["，"], ["ï", "¼", "Į"]),
        (["世界"], ["ä", "¸", "ĸ", "ç", "ķ", "Į"]),
        (["▁4", "2"], ["Ġ42"]),  # digits: 2:1
        (["\n"], ["Ċ"]),
        (["\t"], ["ĉ"]),
        (["ok"], ["o", "k"]),  # 1:2
    ]


def test_eos_on_both_sides_pairs_up(student, teacher):
    groups = _groups("Hello world", student, teacher, student_eos=True, teacher_eos=True)
    assert groups[-1] == (["</s>"], ["<|endoftext|>"])
    groups = _groups("Hello world", student, teacher, teacher_eos=True)
    assert groups[-1] == ([], ["<|endoftext|>"])


@pytest.mark.parametrize("text", ["Hello world 🙂👍🏽", "你好，世界 and 42 apples", "a  b\n\n\tc  ", " leading",
                                  "x=3.14159;\ty = [1, 2]"])
def test_invariants_on_trained_tokenizers(tokenizer_pair, text):
    _check_invariants(text, *tokenizer_pair)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from([*"ab c1 2\n\t你好🙂é,.", "  ", "the ", "ing"]), min_size=1,
                     max_size=20).map("".join))
def test_invariants_on_arbitrary_text(tokenizer_pair, text):
    _check_invariants(text, *tokenizer_pair)


def _check_invariants(text, student, teacher):
    s_ids, t_ids = student.encode(text), teacher.encode(text)
    alignment = align_spans(s_ids, t_ids, student, teacher)
    # every token in exactly one group, groups numbered in order
    assert len(alignment.student) == len(s_ids) and len(alignment.teacher) == len(t_ids)
    for side in (alignment.student, alignment.teacher):
        assert (side[1:] >= side[:-1]).all() and side.min() >= 0 and side.max() < alignment.num_groups
    # groups with tokens on both sides cover the same text (up to the decoders' leading-space handling)
    s_bytes, t_bytes = TokenBytes(student), TokenBytes(teacher)
    text_bytes = text.encode()
    covered_s, covered_t = b"", b""
    for (s0, s1), (t0, t1) in alignment.ranges():
        a = b"".join(s_bytes.pieces[i] for i in s_ids[s0:s1])
        b = b"".join(t_bytes.pieces[i] for i in t_ids[t0:t1])
        covered_s, covered_t = covered_s + a, covered_t + b
        if s1 > s0 and t1 > t0 and a.strip() and b.strip():
            assert a.strip() == b.strip(), (text, a, b)
    assert covered_t == text_bytes  # byte-level BPE is lossless
    assert covered_s.replace(b" ", b"") == text_bytes.replace(b" ", b"")


def test_aligned_groups_pack_a_batch(tokenizer_pair):
    student, teacher = tokenizer_pair
    texts = ["Hello world", "你好 42"]
    alignments, s_rows, t_rows = [], [], []
    for text in texts:
        s_ids, t_ids = student.encode(text, add_special_tokens=False), teacher.encode(text)
        alignments.append(align_spans(s_ids, t_ids, student, teacher))
        s_rows.append(s_ids)
        t_rows.append(t_ids)
    width_s, width_t = max(map(len, s_rows)) + 2, max(map(len, t_rows)) + 1
    pad = lambda rows, width: torch.tensor([r + [0] * (width - len(r)) for r in rows])  # noqa: E731
    groups = AlignedGroups.from_alignments(alignments, pad(s_rows, width_s), pad(t_rows, width_t))
    for b, alignment in enumerate(alignments):
        both = [g for g, ((s0, s1), (t0, t1)) in enumerate(alignment.ranges()) if s1 > s0 and t1 > t0]
        assert int(groups.student_group[b].max()) == len(both) - 1
        assert (groups.student_group[b, len(s_rows[b]):] == -1).all()
    with pytest.raises(ValueError, match="run past the sequence length"):
        AlignedGroups.from_alignments(alignments, pad(s_rows, width_s)[:, :2], pad(t_rows, width_t))


def test_errors_empty_span_different_texts_and_unsupported_tokenizer(tokenizer_pair):
    student, teacher = tokenizer_pair
    with pytest.raises(ValueError, match="empty span: student_ids"):
        align_spans([], teacher.encode("hi"), student, teacher)
    with pytest.raises(ValueError, match="decode to different texts"):
        align_spans(student.encode("completely different words"), teacher.encode("1234567"), student, teacher)
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "hi": 1, "##s": 2}, unk_token="[UNK]"))
    wordpiece.decoder = decoders.WordPiece()
    with pytest.raises(UnsupportedTokenizerError, match="WordPiece"):
        align_spans([1], teacher.encode("hi"), PreTrainedTokenizerFast(tokenizer_object=wordpiece), teacher)
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        align_spans([10**6], teacher.encode("hi"), student, teacher)


def test_vocab_map_matches_across_space_markers(student, teacher, tokenizer_pair):
    vmap = VocabMap(student, teacher)
    pairs = {(student.convert_ids_to_tokens(int(s)), teacher.convert_ids_to_tokens(int(t)))
             for s, t in zip(vmap.student_ids, vmap.teacher_ids, strict=True)}
    assert ("▁wor", "Ġwor") in pairs  # SentencePiece ▁ and byte-level Ġ are both a space
    assert ("</s>", "<|endoftext|>") in pairs  # EOS maps to EOS
    assert ("<0x48>", "H") in pairs  # a byte-fallback piece stands for its byte when no regular piece does
    # one-to-one
    assert len(set(vmap.student_ids.tolist())) == vmap.num_matched == len(set(vmap.teacher_ids.tolist()))
    trained = VocabMap(*tokenizer_pair)
    assert 0 < trained.student_coverage <= 1 and "tokens in common" in trained.summary()


def test_vocab_map_loss_order_puts_matched_teacher_tokens_first(tokenizer_pair):
    vmap = VocabMap(*tokenizer_pair)
    columns = vmap.teacher_size + 5  # an embedding matrix padded past the tokenizer
    order = vmap.loss_order(columns)
    assert sorted(order.tolist()) == list(range(columns))  # a permutation of every column
    assert order[: vmap.num_matched].tolist() == vmap.teacher_ids.tolist()
    rest = order[vmap.num_matched:]
    assert (rest.diff() > 0).all() and set(rest.tolist()).isdisjoint(vmap.teacher_ids.tolist())
    reordered = vmap.in_loss_order(columns)
    assert reordered.teacher_ids.tolist() == list(range(vmap.num_matched))
    assert reordered.student_ids is vmap.student_ids and vmap.teacher_column is None  # the original is untouched
    assert (reordered.teacher_column[order] == torch.arange(columns)).all()  # id -> its column
    with pytest.raises(ValueError, match="already in loss order"):
        reordered.loss_order(columns)
    with pytest.raises(ValueError, match="does not fit 3 logit columns"):
        vmap.loss_order(3)
