"""The one-to-one map between two vocabularies' tokens that stand for the same text.

Two tokens match when they decode to the same bytes: `Ġthe` (byte-level BPE) and `▁the` (SentencePiece) both
are b" the"; `<0x41>` (byte fallback) and `A` are both b"A" (the regular piece is preferred). Special tokens have
no text; EOS maps to EOS and BOS to BOS when both tokenizers have one. Built once from the vocabularies with
dictionary look-ups; the result is two aligned id tensors used as gather indices by GOLD.
"""

from __future__ import annotations

import copy

import torch

from distill.align.spans import token_bytes
from distill.align.token_bytes import TokenBytes


def complement(ids: torch.Tensor, size: int) -> torch.Tensor:
    """The ids of `0..size-1` that are not in `ids` (all below `size`), ascending."""
    keep = torch.ones(size, dtype=torch.bool, device=ids.device)
    keep[ids] = False
    return keep.nonzero().squeeze(-1)


def _first_id_per_text(table: TokenBytes) -> dict[bytes, int]:
    """bytes -> the id to use for them: regular pieces before byte-fallback ones, then the lowest id."""
    best: dict[bytes, tuple[bool, int]] = {}
    for i, piece in enumerate(table.pieces):
        if not piece or table.special[i]:
            continue
        rank = (i in table.fallback_ids, i)
        if piece not in best or rank < best[piece]:
            best[piece] = rank
    return {piece: rank[1] for piece, rank in best.items()}


class VocabMap:
    """Tokens with the same surface text in a student and a teacher vocabulary.

    Attributes:
        student_ids, teacher_ids: `[M]` long tensors; `student_ids[i]` and `teacher_ids[i]` are the same text
            (`teacher_ids` are column numbers of the teacher's logits: its token ids, unless `in_loss_order`).
        student_size, teacher_size: vocabulary sizes (ids the tokenizers can produce).
        teacher_column: None (the teacher's logits are in id order), or `[Vt]` long, the column of each teacher
            token id (`in_loss_order`).
    """

    teacher_column: torch.Tensor | None = None

    def __init__(self, student_tokenizer, teacher_tokenizer) -> None:
        student, teacher = token_bytes(student_tokenizer), token_bytes(teacher_tokenizer)
        s_index = _first_id_per_text(student)
        t_index = _first_id_per_text(teacher)
        pairs = sorted((s_index[text], t_id) for text, t_id in t_index.items() if text in s_index)
        for name in ("eos_token_id", "bos_token_id"):
            s_special, t_special = getattr(student_tokenizer, name, None), getattr(teacher_tokenizer, name, None)
            if s_special is not None and t_special is not None:
                pairs.append((int(s_special), int(t_special)))
        pairs = sorted(set(pairs))
        self.student_ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        self.teacher_ids = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        self.student_size = len(student)
        self.teacher_size = len(teacher)

    @property
    def num_matched(self) -> int:
        return int(self.student_ids.numel())

    @property
    def student_coverage(self) -> float:
        """Share of the student vocabulary that has a teacher counterpart."""
        return self.num_matched / max(self.student_size, 1)

    @property
    def teacher_coverage(self) -> float:
        """Share of the teacher vocabulary that has a student counterpart."""
        return self.num_matched / max(self.teacher_size, 1)

    def loss_order(self, columns: int) -> torch.Tensor:
        """`[columns]`: the teacher ids in GOLD's column order, the matched ones first (in `teacher_ids` order, i.e.
        aligned with `student_ids`), then the rest ascending. `columns` is the width of the teacher's logits (its
        embedding matrix may be padded past the tokenizer)."""
        if self.teacher_column is not None:
            raise ValueError("VocabMap.loss_order: this map is already in loss order")
        if self.num_matched and int(self.teacher_ids.max()) >= columns:
            raise ValueError(f"VocabMap.loss_order: teacher id {int(self.teacher_ids.max())} does not fit {columns} "
                             "logit columns")
        return torch.cat([self.teacher_ids, complement(self.teacher_ids, columns)])

    def in_loss_order(self, columns: int) -> VocabMap:
        """A copy of this map for teacher logits whose columns are `loss_order(columns)` (a teacher head with its
        rows in that order): matched token i is column i, so GOLD reads the matched and unmatched columns as two
        slices instead of two gathers, and `teacher_column` maps a realised teacher token id to its column."""
        order = self.loss_order(columns)
        reordered = copy.copy(self)
        reordered.teacher_ids = torch.arange(self.num_matched, device=order.device)
        reordered.teacher_column = torch.empty_like(order).index_put_((order,), torch.arange(columns,
                                                                                                device=order.device))
        return reordered

    def to(self, device: torch.device | str) -> VocabMap:
        self.student_ids = self.student_ids.to(device)
        self.teacher_ids = self.teacher_ids.to(device)
        if self.teacher_column is not None:
            self.teacher_column = self.teacher_column.to(device)
        return self

    def summary(self) -> str:
        return (
            f"{self.num_matched} tokens in common: {self.student_coverage:.1%} of the student's {self.student_size}, "
            f"{self.teacher_coverage:.1%} of the teacher's {self.teacher_size}"
        )

    def __repr__(self) -> str:
        return f"VocabMap({self.summary()})"
