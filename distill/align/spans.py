"""Sequence alignment of two tokenizations of the same text by byte spans.

Given the student's and the teacher's token ids for one text, `align_spans` cuts both sequences at the byte
positions where *both* tokenizers have a token boundary. Each cut-to-cut stretch is a group: a run of
consecutive student tokens and a run of consecutive teacher tokens covering exactly the same bytes. Zero-width
tokens (BOS, EOS, chat markers) at a common boundary form a group of their own with the other side's zero-width
tokens at the same place; a side without one leaves that group empty on its side.

Every token is in exactly one group; groups are in text order. When the two byte streams differ (a prefix
space one tokenizer adds, a normalizer that rewrote whitespace) they are reconciled by a byte diff, and a
boundary inside a differing stretch is not a common boundary.

`AlignedGroups.from_alignments` packs per-sample alignments into the `[B, T]` group-index tensors the
cross-tokenizer losses take.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from distill.align.token_bytes import TokenBytes

_MIN_BYTE_AGREEMENT = 0.9


class SpanAlignment(NamedTuple):
    """Group index of every token on each side: `student[i]` is the group of student token i (shape `[Ts]`),
    `teacher[j]` that of teacher token j (`[Tt]`); groups are numbered `0..num_groups-1` in text order."""

    student: np.ndarray
    teacher: np.ndarray
    num_groups: int

    def __len__(self) -> int:
        return self.num_groups

    def ranges(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Per group, the half-open token ranges `((s0, s1), (t0, t1))`; a range is empty where a side has none."""
        return list(zip(_ranges(self.student, self.num_groups), _ranges(self.teacher, self.num_groups), strict=True))


def token_bytes(tokenizer) -> TokenBytes:
    """The tokenizer's `TokenBytes`, built once and kept on the tokenizer object."""
    cached = getattr(tokenizer, "_distill_token_bytes", None)
    if cached is None:
        cached = TokenBytes(tokenizer)
        with contextlib.suppress(AttributeError):  # a tokenizer that refuses new attributes is rebuilt next time
            tokenizer._distill_token_bytes = cached
    return cached


def _to_common(positions: np.ndarray, opcodes, side: int) -> np.ndarray:
    """Map byte positions of one stream (side 0 = a, 1 = b) into stream a's coordinates.

    Inside an `equal` block positions move with the block; a position strictly inside a differing block moves to
    that block's end in a, so it can only coincide with a boundary the other side also has there.
    """
    out = np.empty_like(positions)
    for tag, i1, i2, j1, j2 in opcodes:
        lo, hi = (i1, i2) if side == 0 else (j1, j2)
        sel = (positions >= lo) & (positions <= hi)
        if tag == "equal":
            out[sel] = positions[sel] - lo + i1
        else:
            out[sel & (positions == lo)] = i1
            out[sel & (positions > lo)] = i2
    return out


def _group_keys(spans: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Order key of each token's group: 2j for content ending at cut j, 2j+1 for zero-width tokens at cut j."""
    starts, ends = spans[:, 0], spans[:, 1]
    zero = starts == ends
    j = np.searchsorted(cuts, ends, side="left")
    on_cut = (j < len(cuts)) & (cuts[np.minimum(j, len(cuts) - 1)] == ends)
    return np.where(zero & on_cut, 2 * j + 1, 2 * j)


def align_spans(
    student_ids, teacher_ids, student_tokenizer, teacher_tokenizer, *, continuation: bool = False
) -> SpanAlignment:
    """Group consecutive student and teacher tokens that cover the same bytes of text.

    Args:
        student_ids: `[Ts]` token ids (list or 1-D tensor) in the student's vocabulary.
        teacher_ids: `[Tt]` token ids of the same text in the teacher's vocabulary.
        student_tokenizer, teacher_tokenizer: fast tokenizers (byte-level BPE or SentencePiece style).
        continuation: the ids continue earlier text (completions after their prompts), so a SentencePiece
            decoder's strip of the first token's leading space does not apply.

    Returns:
        `SpanAlignment` with G groups; `student[g]` and `teacher[g]` are token ranges covering the same bytes.

    Raises:
        ValueError: an empty sequence, or ids whose texts differ beyond whitespace (under 90% of bytes in common).
        UnsupportedTokenizerError: a tokenizer whose pieces cannot be mapped back to bytes.
    """
    s_ids = np.asarray(torch.as_tensor(student_ids).cpu(), dtype=np.int64).reshape(-1)
    t_ids = np.asarray(torch.as_tensor(teacher_ids).cpu(), dtype=np.int64).reshape(-1)
    if s_ids.size == 0 or t_ids.size == 0:
        side = "student_ids" if s_ids.size == 0 else "teacher_ids"
        raise ValueError(f"align_spans: empty span: {side} has no tokens")
    s_text, s_spans = token_bytes(student_tokenizer).sequence(s_ids, continuation)
    t_text, t_spans = token_bytes(teacher_tokenizer).sequence(t_ids, continuation)
    if s_text != t_text:
        matcher = difflib.SequenceMatcher(None, s_text, t_text, autojunk=False)
        common = sum(block.size for block in matcher.get_matching_blocks())
        same_words = b"".join(s_text.split()) == b"".join(t_text.split())
        if not same_words and common < _MIN_BYTE_AGREEMENT * max(len(s_text), len(t_text)):
            raise ValueError(
                "align_spans: student and teacher ids decode to different texts "
                f"({common} of {max(len(s_text), len(t_text))} bytes in common): "
                f"student {s_text[:60]!r}... teacher {t_text[:60]!r}..."
            )
        opcodes = matcher.get_opcodes()
        s_spans = _to_common(s_spans, opcodes, 0)
        t_spans = _to_common(t_spans, opcodes, 1)
    cuts = np.intersect1d(np.concatenate([[0], s_spans[:, 1]]), np.concatenate([[0], t_spans[:, 1]]))
    s_keys, t_keys = _group_keys(s_spans, cuts), _group_keys(t_spans, cuts)
    keys = np.union1d(s_keys, t_keys)
    return SpanAlignment(np.searchsorted(keys, s_keys), np.searchsorted(keys, t_keys), len(keys))


def _ranges(group_of_token: np.ndarray, num_groups: int) -> list[tuple[int, int]]:
    """Token ranges per group from a non-decreasing group index per token (empty ranges where absent)."""
    starts = np.searchsorted(group_of_token, np.arange(num_groups), side="left")
    ends = np.searchsorted(group_of_token, np.arange(num_groups), side="right")
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


@dataclass(frozen=True)
class AlignedGroups:
    """Batched alignment in the form the cross-tokenizer losses take.

    Attributes:
        student_group: `[B, Ts]` long, group index of each student target position, -1 where not aligned.
        teacher_group: `[B, Tt]` long, the same for the teacher.
        student_ids: `[B, Ts]` long, the realised student target tokens (for merging probabilities in a group).
        teacher_ids: `[B, Tt]` long, the realised teacher target tokens.

    Group indices are per sample, `0..G_b-1`, in text order; only groups with tokens on both sides are scored.
    """

    student_group: torch.Tensor
    teacher_group: torch.Tensor
    student_ids: torch.Tensor
    teacher_ids: torch.Tensor

    @classmethod
    def from_alignments(
        cls,
        alignments: list[SpanAlignment],
        student_ids: torch.Tensor,
        teacher_ids: torch.Tensor,
        student_start: list[int] | torch.Tensor | None = None,
        teacher_start: list[int] | torch.Tensor | None = None,
    ) -> AlignedGroups:
        """Pack per-sample alignments of completion tokens into `[B, T]` group indices.

        `student_start[b]` is the position in the `[B, Ts]` target tensor where sample b's aligned tokens begin
        (the completion start in a padded batch); 0 by default. Groups empty on one side get index -1 on the other.
        """
        batch = len(alignments)
        if student_ids.shape[0] != batch or teacher_ids.shape[0] != batch:
            raise ValueError(
                f"AlignedGroups: {batch} alignments but student_ids {tuple(student_ids.shape)} and teacher_ids "
                f"{tuple(teacher_ids.shape)}"
            )
        s_group = torch.full(student_ids.shape, -1, dtype=torch.long)
        t_group = torch.full(teacher_ids.shape, -1, dtype=torch.long)
        s_start = [0] * batch if student_start is None else [int(x) for x in student_start]
        t_start = [0] * batch if teacher_start is None else [int(x) for x in teacher_start]
        for b, alignment in enumerate(alignments):
            n = alignment.num_groups
            both = (np.bincount(alignment.student, minlength=n) > 0) & (np.bincount(alignment.teacher, minlength=n) > 0)
            renumber = torch.as_tensor(np.where(both, np.cumsum(both) - 1, -1))
            sides = ((s_group, s_start[b], alignment.student), (t_group, t_start[b], alignment.teacher))
            for group, start, side in sides:
                if start + len(side) > group.shape[1]:
                    raise ValueError(
                        f"AlignedGroups: sample {b}: {len(side)} aligned tokens from position {start} run past the "
                        f"sequence length {group.shape[1]}"
                    )
                group[b, start : start + len(side)] = renumber[torch.as_tensor(side)]
        return cls(s_group.to(student_ids.device), t_group.to(teacher_ids.device), student_ids, teacher_ids)

    @classmethod
    def positional(cls, mask: torch.Tensor, student_ids: torch.Tensor, teacher_ids: torch.Tensor) -> AlignedGroups:
        """One group per masked position, the same position on both sides (same tokenizer, or ULD's truncation)."""
        index = torch.cumsum(mask.long(), dim=1) - 1
        group = torch.where(mask.bool(), index, torch.full_like(index, -1))
        return cls(group, group.clone(), student_ids, teacher_ids)
