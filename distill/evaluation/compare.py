"""Per-unit teacher–student comparison on one teacher-forced sequence: KL, top-1 agreement, tail masses.

The runner feeds both models the same completion (the student's own generation) and hands the rows of logits
that predicted the completion tokens here. The outputs are the inputs of the `teacher_agreement` and
`tail_coverage` metrics.

**Same vocabulary** (`same_vocab_units`): one unit per completion position t, p = softmax of each side's row
(over the first min(V_S, V_T) columns, so a model's padded embedding rows are ignored):

    kl_t      = KL(p_T ‖ p_S) = Σ_v p_T(v) (log p_T(v) − log p_S(v))
    agree_t   = [argmax p_S = argmax p_T]
    covered_t = Σ_{v ≠ t*} min(p_S(v), p_T(v)),   total_t = Σ_{v ≠ t*} p_T(v),   t* = argmax p_T

**Different tokenizers** (`cross_vocab_units`): the completion text is tokenised by each side and the two token
sequences are cut into byte-aligned span groups (`distill.align.align_spans`); a unit is a group with tokens
on both sides. Each side's rows in a group are merged by the chain rule ("bayesian", as in
`distill.align.merge_span_log_probs`): m(v) = p_last(v) · Π_{k<last} p_k(x_k), whose value at the realised
last token is the probability of the group's whole text. The two merged rows are compared on the tokens both
vocabularies share (`distill.align.VocabMap`, tokens with the same bytes) plus one *rest* bucket holding each
side's remaining mass (unmatched tokens and the merge deficit), i.e. two proper distributions q_S, q_T over
M + 1 outcomes — the matched part of GOLD's objective:

    kl_g      = KL(q_T ‖ q_S)                       (≤ the full KL; equal when every token is matched)
    agree_g   = [the teacher's argmax token (full vocabulary) has the same text as the student's argmax]
    covered_g = Σ_{matched u ≠ u*} min(q_S(u), q_T(u)),   total_g = Σ_{u ≠ u*} q_T(u),   u* = argmax q_T

The rest bucket counts in the teacher's tail (`total`) but is never credited as covered (its contents on the
two sides need not be the same tokens), so cross-tokenizer tail coverage is a lower bound. With a single
token on each side of a group (the common case) both rows are next-token distributions after the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from distill.align import SpanAlignment, VocabMap
from distill.align.vocab import complement

# rows of [rows, V] float64 work at a time: bounds the temporaries to ~128 MiB whatever the vocabulary size
_CHUNK_ELEMENTS = 1 << 24


@dataclass
class UnitStats:
    """Per-unit values (units = positions or span groups), accumulated over sequences as Python lists."""

    kl: list[float] = field(default_factory=list)
    top1_agree: list[bool] = field(default_factory=list)
    tail_covered: list[float] = field(default_factory=list)
    tail_total: list[float] = field(default_factory=list)

    def extend(self, other: UnitStats) -> None:
        self.kl += other.kl
        self.top1_agree += other.top1_agree
        self.tail_covered += other.tail_covered
        self.tail_total += other.tail_total

    def __len__(self) -> int:
        return len(self.kl)

    @classmethod
    def from_tensors(cls, kl, agree, covered, total) -> UnitStats:
        return cls(kl.tolist(), agree.tolist(), covered.tolist(), total.tolist())


def _row_chunks(num_rows: int, vocab: int):
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def same_vocab_units(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> UnitStats:
    """Per-position stats for `student_logits [T, Vs]`, `teacher_logits [T, Vt]` (same tokenizer, same rows)."""
    if student_logits.dim() != 2 or teacher_logits.dim() != 2 or student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(
            f"same_vocab_units: need [T, V] rows for the same T, got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}"
        )
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    out = UnitStats()
    for rows in _row_chunks(student_logits.shape[0], vocab):
        s_logp = torch.log_softmax(student_logits[rows, :vocab].double(), dim=-1)
        t_logp = torch.log_softmax(teacher_logits[rows, :vocab].to(s_logp.device).double(), dim=-1)
        t_p, s_p = t_logp.exp(), s_logp.exp()
        kl = torch.where(t_p > 0, t_p * (t_logp - s_logp), torch.zeros_like(t_p)).sum(-1).clamp_min(0.0)
        t_top = t_logp.argmax(-1, keepdim=True)
        agree = s_logp.argmax(-1, keepdim=True) == t_top
        both = torch.minimum(s_p, t_p)
        covered = both.sum(-1) - both.gather(-1, t_top).squeeze(-1)
        total = t_p.sum(-1) - t_p.gather(-1, t_top).squeeze(-1)
        out.extend(UnitStats.from_tensors(kl, agree.squeeze(-1), covered.clamp_min(0.0), total.clamp_min(0.0)))
    return out


def _chain_rule_parts(logits: torch.Tensor, ids: torch.Tensor, group_of_row: torch.Tensor):
    """The chain-rule merge of consecutive rows per group, in parts: `logits [n, V]`, `ids [n]`,
    `group_of_row [n]` (non-decreasing, 0..G-1) → (`last [G]`, the row whose full distribution each group keeps,
    and `prefix [G]`, Σ log p_k(x_k) over the group's earlier rows). The merged row of group g is
    `log_softmax(logits[last[g]]) + prefix[g]`, exactly `merge_span_log_probs(..., "bayesian")`."""
    realised = torch.empty(logits.shape[0], dtype=torch.float64, device=logits.device)
    for rows in _row_chunks(logits.shape[0], logits.shape[-1]):
        logp = torch.log_softmax(logits[rows].double(), dim=-1)
        realised[rows] = logp.gather(-1, ids[rows].unsqueeze(-1)).squeeze(-1)
    is_last = torch.cat([group_of_row[1:] != group_of_row[:-1], group_of_row.new_ones(1, dtype=torch.bool)])
    prefix = torch.zeros(int(is_last.sum()), dtype=torch.float64, device=logits.device)
    prefix = prefix.index_add(0, group_of_row[~is_last], realised[~is_last])
    return is_last.nonzero().squeeze(-1), prefix


def _bucketed(logp_last: torch.Tensor, prefix: torch.Tensor, matched: torch.Tensor, unmatched: torch.Tensor):
    """Merged rows over the matched tokens plus the rest bucket, `[G, M+1]` log-probs, from the chain-rule parts
    (`logp_last [G, V]` normalised, `prefix [G]`). The rest is summed, never computed as 1 − Σ matched (which
    cancels catastrophically when the matched tokens hold nearly all the mass):

        rest = (1 − e^prefix) + e^prefix · Σ_{v unmatched} p_last(v)
    """
    prefix = prefix.clamp_max(0.0).unsqueeze(-1)
    cols = logp_last.index_select(-1, matched) + prefix
    deficit = torch.log(-torch.expm1(prefix))  # -inf for a one-token group
    if unmatched.numel():
        deficit = torch.logaddexp(deficit, prefix + torch.logsumexp(logp_last.index_select(-1, unmatched), -1, True))
    return torch.cat([cols, deficit], dim=-1)


def cross_vocab_units(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_ids: torch.Tensor | list[int],
    teacher_ids: torch.Tensor | list[int],
    alignment: SpanAlignment,
    vocab_map: VocabMap,
) -> UnitStats:
    """Per-group stats for one completion tokenised by both sides.

    Args:
        student_logits: `[Ts, Vs]` rows predicting `student_ids [Ts]`; teacher_logits: `[Tt, Vt]` predicting
            `teacher_ids [Tt]`; alignment: `align_spans(student_ids, teacher_ids, ...)`; vocab_map: shared tokens.
    """
    device = student_logits.device
    s_ids = torch.as_tensor(student_ids, dtype=torch.long, device=device).reshape(-1)
    t_ids = torch.as_tensor(teacher_ids, dtype=torch.long, device=device).reshape(-1)
    teacher_logits = teacher_logits.to(device)
    if student_logits.shape[0] != s_ids.numel() or teacher_logits.shape[0] != t_ids.numel():
        raise ValueError(
            f"cross_vocab_units: {student_logits.shape[0]} student rows for {s_ids.numel()} ids, "
            f"{teacher_logits.shape[0]} teacher rows for {t_ids.numel()} ids"
        )
    if len(alignment.student) != s_ids.numel() or len(alignment.teacher) != t_ids.numel():
        raise ValueError("cross_vocab_units: the alignment is for sequences of other lengths")
    n = alignment.num_groups
    both = (np.bincount(alignment.student, minlength=n) > 0) & (np.bincount(alignment.teacher, minlength=n) > 0)
    if not both.any():
        return UnitStats()
    renumber = torch.as_tensor(np.where(both, np.cumsum(both) - 1, -1), device=device)
    s_group, t_group = renumber[torch.as_tensor(alignment.student)], renumber[torch.as_tensor(alignment.teacher)]
    s_keep, t_keep = s_group >= 0, t_group >= 0
    s_rows, t_rows = student_logits[s_keep], teacher_logits[t_keep]
    s_last, s_prefix = _chain_rule_parts(s_rows, s_ids[s_keep], s_group[s_keep])
    t_last, t_prefix = _chain_rule_parts(t_rows, t_ids[t_keep], t_group[t_keep])
    s_matched, t_matched = vocab_map.student_ids.to(device), vocab_map.teacher_ids.to(device)
    s_unmatched, t_unmatched = complement(s_matched, s_rows.shape[-1]), complement(t_matched, t_rows.shape[-1])
    teacher_to_student = torch.full((t_rows.shape[-1],), -1, dtype=torch.long, device=device)
    teacher_to_student[t_matched] = s_matched
    out = UnitStats()
    for groups in _row_chunks(len(s_last), max(s_rows.shape[-1], t_rows.shape[-1])):
        s_logp = torch.log_softmax(s_rows[s_last[groups]].double(), -1)
        t_logp = torch.log_softmax(t_rows[t_last[groups]].double(), -1)
        q_s = _bucketed(s_logp, s_prefix[groups], s_matched, s_unmatched)
        q_t = _bucketed(t_logp, t_prefix[groups], t_matched, t_unmatched)
        p_t = q_t.exp()
        kl = torch.where(p_t > 0, p_t * (q_t - q_s), torch.zeros_like(p_t)).sum(-1).clamp_min(0.0)
        agree = teacher_to_student[t_logp.argmax(-1)] == s_logp.argmax(-1)  # a merged row's argmax: its last row's
        top = q_t.argmax(-1, keepdim=True)
        both_p = torch.minimum(q_s.exp(), p_t)
        both_p[:, -1] = 0.0  # the rest bucket is never credited as covered
        covered = both_p.sum(-1) - both_p.gather(-1, top).squeeze(-1)
        total = p_t.sum(-1) - p_t.gather(-1, top).squeeze(-1)
        out.extend(UnitStats.from_tensors(kl, agree, covered.clamp_min(0.0), total.clamp_min(0.0)))
    return out
