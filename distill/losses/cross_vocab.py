"""Cross-tokenizer objectives: ULD (sorted-probability Wasserstein) and GOLD (matched JSD + ULD on the rest).

Both compare a student and a teacher whose vocabularies differ (`[B, Ts, Vs]` vs `[B, Tt, Vt]`). Positions are
paired either one-to-one (`alignment=None`: same `[B, T]`, ULD's positional truncation done by the caller) or
by span groups (`alignment=AlignedGroups`, from `distill.align.align_spans` or `dtw_align`), where each side's
rows in a group are merged with `merge` ("bayesian" chain rule by default, or "observed"). With an alignment
the unit of the mean is the group; `mask` must cover every aligned student position.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from distill.align.merge import MergeStrategy
from distill.align.spans import AlignedGroups
from distill.align.vocab import VocabMap, complement
from distill.losses import divergences as div
from distill.losses._common import (
    Reduction,
    check_logits,
    check_mask,
    check_positive,
    check_reduction,
    check_same_positions,
    check_unit_interval,
    reduce_units,
)
from distill.losses.engine import resolve_chunk_size
from distill.losses.merged_rows import MergedRows, floored_log
from distill.losses.sorting import sorted_l1_and_grad
from distill.losses.units import GroupPairFn, Parts, UnitLosses, group_units, one_group_per_position


def _units(
    pair_fn: GroupPairFn,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    alignment: AlignedGroups | None,
    merge: MergeStrategy,
    temperature: float,
    teacher_temperature: float | None,
    chunk_size: int | None,
    parts: tuple[Parts, Parts] = ((None,), (None,)),
) -> UnitLosses:
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    mask = check_mask(mask, student_logits)
    temperature = check_positive("temperature", temperature)
    teacher_temperature = check_positive(
        "teacher_temperature", temperature if teacher_temperature is None else teacher_temperature
    )
    chunk_size = resolve_chunk_size(chunk_size, student_logits.shape[-1], teacher_logits.shape[-1])
    if alignment is None:
        check_same_positions(student_logits, teacher_logits)
        alignment = one_group_per_position(mask)
    return group_units(pair_fn, student_logits, teacher_logits, alignment, mask, merge, temperature,
                       teacher_temperature, chunk_size, parts)


def _uld_pair(student: MergedRows, teacher: MergedRows, _units, needs_grad: bool):
    (s_probs,), (t_probs,) = student.probs, teacher.probs
    value, grad = sorted_l1_and_grad(s_probs, t_probs, needs_grad)
    return value, (None if grad is None else (grad.mul_(s_probs),)), None  # ∂/∂log p = ∂/∂p · p


def uld(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    alignment: AlignedGroups | None = None,
    merge: MergeStrategy = "bayesian",
    temperature: float = 1.0,
    teacher_temperature: float | None = None,
    reduction: Reduction = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """ULD: Σ_r |p_S↓(r) − p_T↓(r)| per unit (sorted probabilities, the shorter vocabulary zero-padded).

    The closed-form Wasserstein-1 of Boizard et al. (2024): invariant to permutations of either vocabulary, so it
    matches the *shape* of the teacher's distribution, not which token is likely. Any two vocabulary sizes.
    """
    check_reduction(reduction, num_items_in_batch)
    units = _units(_uld_pair, student_logits, teacher_logits, mask, alignment, merge, temperature,
                   teacher_temperature, chunk_size)
    return reduce_units(units.values, reduction, num_items_in_batch, units.batch, units.index, units.layout)


class GoldLoss(NamedTuple):
    """GOLD's loss and its parts (`matched`, `unmatched`: the reduced terms, detached) and the weights used."""

    loss: torch.Tensor
    matched: torch.Tensor
    unmatched: torch.Tensor
    matched_weight: float
    unmatched_weight: float


def gold(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    vocab_map: VocabMap,
    *,
    alignment: AlignedGroups | None = None,
    beta: float = 0.5,
    matched_weight: float | None = None,
    unmatched_weight: float | None = None,
    merge: MergeStrategy = "bayesian",
    temperature: float = 1.0,
    teacher_temperature: float | None = None,
    reduction: Reduction = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> GoldLoss:
    """GOLD hybrid: w_m·JSD_β on the matched vocabulary + w_u·ULD on the unmatched rest, per unit.

    Matched term: the generalized JSD(β) between the distributions over the M matched tokens (`vocab_map`)
    *plus one bucket* holding each side's remaining mass (unmatched tokens, and a merged group's deficit). That
    makes it a proper divergence: ≥ 0, and 0 iff both sides agree on every matched token and on the rest mass.
    Unmatched term: ULD's sorted L1 between the unmatched columns of each side.
    Weights: fixed (`matched_weight`, `unmatched_weight`, both ≥ 0) or adaptive: w_m = M / Vt, w_u = 1 − w_m.
    """
    check_reduction(reduction, num_items_in_batch)
    beta = check_unit_interval("beta", beta)
    w_m, w_u = _gold_weights(matched_weight, unmatched_weight, vocab_map, teacher_logits)
    device = student_logits.device
    s_matched, t_matched = vocab_map.student_ids.to(device), vocab_map.teacher_ids.to(device)
    s_unmatched = _unmatched(s_matched, student_logits.shape[-1], "student")
    t_unmatched = _unmatched(t_matched, teacher_logits.shape[-1], "teacher")
    collected: list[tuple[torch.Tensor, torch.Tensor]] = []  # (units, [u, 2] detached parts), per chunk

    def pair(student: MergedRows, teacher: MergedRows, units, needs_grad: bool):
        (s, s_rest_probs), (t, t_rest_probs) = student.probs, teacher.probs
        s_logp, t_logp = student.log_probs(0), teacher.log_probs(0, exact=False)
        s_rest, t_rest = _rest_mass(s_rest_probs, student.log_mass), _rest_mass(t_rest_probs, teacher.log_mass)
        matched, grad_matched = div.jsd_and_grad(s_logp, s, t_logp, t, beta, needs_grad)
        bucket, grad_bucket = div.jsd_and_grad(floored_log(s_rest), s_rest, floored_log(t_rest), t_rest, beta,
                                               needs_grad)
        unmatched, grad_unmatched = sorted_l1_and_grad(s_rest_probs, t_rest_probs, needs_grad)
        matched += bucket
        collected.append((units, torch.stack([matched, unmatched], dim=-1)))
        value = w_m * matched + w_u * unmatched
        if not needs_grad:
            return value, None, None
        # the bucket's log-mass is log(U + D), U the unmatched probabilities' sum and D = 1 − e^π the deficit:
        # ∂/∂log p_j = p_j / (U + D) on an unmatched column, ∂/∂π = −e^π / (U + D)
        per_rest = torch.where(s_rest > 0, grad_bucket / s_rest, 0.0).squeeze(-1).mul_(w_m)
        grad_rest = grad_unmatched.mul_(w_u).add_(per_rest.unsqueeze(-1)).mul_(s_rest_probs)
        return value, (grad_matched.mul_(w_m), grad_rest), per_rest.mul_(student.log_mass.exp()).neg_()

    teacher_column = getattr(vocab_map, "teacher_column", None)  # set for teacher logits in loss order
    if alignment is not None and teacher_column is not None:
        alignment = _teacher_ids_as_columns(alignment, teacher_column.to(device))
    parts = tuple((_as_slice(matched), _as_slice(unmatched))
                  for matched, unmatched in ((s_matched, s_unmatched), (t_matched, t_unmatched)))
    units = _units(pair, student_logits, teacher_logits, mask, alignment, merge, temperature, teacher_temperature,
                   chunk_size, parts=parts)
    loss = reduce_units(units.values, reduction, num_items_in_batch, units.batch, units.index, units.layout)
    values = units.values.detach().new_zeros(units.values.numel(), 2)
    for unit_ids, part_values in collected:
        values[unit_ids] = part_values.to(values.dtype)
    matched, unmatched = (
        reduce_units(values[:, i], reduction, num_items_in_batch, units.batch, units.index, units.layout)
        for i in range(2)
    )
    return GoldLoss(loss, matched, unmatched, w_m, w_u)


def _rest_mass(rest_probs: torch.Tensor, log_mass: torch.Tensor) -> torch.Tensor:
    """`[u, 1]`: a merged row's mass outside the matched columns, U + D: its unmatched probabilities' sum, plus the
    deficit D = 1 − e^π of a merged group (0 for one token). Sums of non-negative terms: no cancellation."""
    deficit = torch.expm1(log_mass).neg_().clamp_(min=0.0)
    return rest_probs.sum(-1).add_(deficit).unsqueeze(-1)


def _gold_weights(matched_weight, unmatched_weight, vocab_map: VocabMap, teacher_logits) -> tuple[float, float]:
    if (matched_weight is None) != (unmatched_weight is None):
        raise ValueError("gold: set both matched_weight and unmatched_weight, or neither (adaptive weights)")
    if matched_weight is None:
        share = vocab_map.num_matched / teacher_logits.shape[-1]
        return share, 1.0 - share
    if matched_weight < 0 or unmatched_weight < 0:
        raise ValueError(f"gold: weights must be >= 0, got {matched_weight}, {unmatched_weight}")
    return float(matched_weight), float(unmatched_weight)


def _unmatched(ids: torch.Tensor, size: int, side: str) -> torch.Tensor:
    """A side's columns outside its matched `ids`, after checking the ids fit its logits."""
    if ids.numel() and int(ids.max()) >= size:
        raise ValueError(
            f"gold: vocab_map has {side} id {int(ids.max())} but the {side} logits have only {size} columns"
        )
    return complement(ids, size)


def _teacher_ids_as_columns(alignment: AlignedGroups, teacher_column: torch.Tensor) -> AlignedGroups:
    """The alignment with its realised teacher tokens as columns of teacher logits in loss order (ids outside
    the vocabulary, at ungrouped positions, are kept: the alignment check reports them if they are grouped)."""
    ids = alignment.teacher_ids
    inside = (ids >= 0) & (ids < teacher_column.numel())
    columns = teacher_column[ids.clamp(0, teacher_column.numel() - 1)]
    return dataclasses.replace(alignment, teacher_ids=torch.where(inside, columns, ids))


def _as_slice(ids: torch.Tensor) -> torch.Tensor | slice:
    """Consecutive ids `a, a+1, …, b−1` as `slice(a, b)`: a part read as a slice is a copy of each row's segment
    instead of a gather (teacher logits in the loss's column order, `VocabMap.loss_order`)."""
    if ids.numel() == 0 or int(ids[-1]) - int(ids[0]) != ids.numel() - 1 or not bool((ids.diff() == 1).all()):
        return ids
    return slice(int(ids[0]), int(ids[-1]) + 1)
