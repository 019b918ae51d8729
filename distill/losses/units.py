"""The two kinds of scored units, evaluated chunk by chunk through `engine.chunked_row_loss`.

- `token_units`: one unit per masked target position; the teacher signal is read at the same position
  (same tokenizer, or positions aligned by the caller). The row loss is differentiated by autograd.
- `group_units`: one unit per aligned span group (`AlignedGroups`); each side's rows in a group are merged
  into one distribution (`merged_rows.MergedRows`, split into column parts) and the row loss returns its own
  gradient (closed form), which `MergedRows.logits_grad` carries back to the logits.

Both return `UnitLosses`: the `[N]` losses, and where each unit sits in `[B, L]` for `reduction="none"`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from distill.align.merge import MergeStrategy, check_strategy
from distill.align.spans import AlignedGroups
from distill.losses.engine import Chunk, chunk_slices, chunked_row_loss, log_probs, rows_at
from distill.losses.merged_rows import MergedRows

# (student rows' log-probs [u, Vs], teacher rows [u, ...], unit ids [u]) -> losses [u]
PairFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (student, teacher merged rows, unit ids [u], needs_grad) ->
#     (losses [u], ∂Σlosses/∂ student.log_probs per part or None, ∂Σlosses/∂ student.log_mass beyond them or None)
GroupPairFn = Callable[[MergedRows, MergedRows, torch.Tensor, bool],
                       tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, torch.Tensor | None]]
Parts = tuple[torch.Tensor | None, ...]


@dataclass
class UnitLosses:
    values: torch.Tensor  # [N]
    batch: torch.Tensor  # [N] sample of each unit
    index: torch.Tensor  # [N] position (token units) or group number (group units) in its sample
    layout: tuple[int, int]  # [B, L] for reduction="none"


def token_units(
    pair_fn: PairFn,
    student_logits: torch.Tensor,
    teacher_rows: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    teacher_transform: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int,
) -> UnitLosses:
    """One unit per `mask`ed position. `teacher_rows [B, T, ...]` is read at the same positions and passed
    through `teacher_transform` (e.g. a tempered log-softmax) one chunk at a time."""
    batch, length = mask.shape
    positions = mask.reshape(-1).nonzero().squeeze(-1)
    teacher_rows = teacher_rows.detach()

    def chunks():
        for part in chunk_slices(positions.numel(), chunk_size):
            rows = positions[part]
            units = torch.arange(part.start, part.stop, device=rows.device)
            teacher = teacher_transform(rows_at(teacher_rows, rows))
            yield Chunk(rows, units, units, lambda s, t=teacher, u=units: pair_fn(log_probs(s, temperature), t, u))

    values = chunked_row_loss(student_logits, positions.numel(), chunks)
    return UnitLosses(values, positions // length, positions % length, (batch, length))


def _sorted_members(group: torch.Tensor, num_groups: int):
    """Flat positions of a side's grouped tokens, sorted by (sample, group, position), and their flat group id."""
    batch, length = group.shape
    flat_group = (torch.arange(batch, device=group.device).unsqueeze(1) * num_groups + group).reshape(-1)
    positions = (group.reshape(-1) >= 0).nonzero().squeeze(-1)
    key = flat_group[positions] * length + positions % length
    positions = positions[torch.argsort(key)]
    return positions, flat_group[positions]


def group_units(
    pair_fn: GroupPairFn,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    alignment: AlignedGroups,
    mask: torch.Tensor,
    merge: MergeStrategy,
    temperature: float,
    teacher_temperature: float,
    chunk_size: int,
    parts: tuple[Parts, Parts] = ((None,), (None,)),
) -> UnitLosses:
    """One unit per span group with tokens on both sides; rows merged per group with `merge`, their columns taken
    in `parts` (student's, teacher's: index tensors covering each vocabulary once, or `(None,)` for all)."""
    check_strategy(merge)
    _check_alignment(alignment, student_logits, teacher_logits, mask)
    batch = student_logits.shape[0]
    num_groups = int(max(alignment.student_group.max(), alignment.teacher_group.max(), -1)) + 1
    s_pos, s_fg = _sorted_members(alignment.student_group, num_groups)
    t_pos, t_fg = _sorted_members(alignment.teacher_group, num_groups)
    slots = batch * num_groups
    s_count = torch.bincount(s_fg, minlength=slots)
    t_count = torch.bincount(t_fg, minlength=slots)
    scored = (s_count > 0) & (t_count > 0)
    unit_of_group = torch.cumsum(scored.long(), 0) - 1
    s_keep, t_keep = scored[s_fg], scored[t_fg]
    s_pos, s_unit = s_pos[s_keep], unit_of_group[s_fg[s_keep]]
    t_pos, t_unit = t_pos[t_keep], unit_of_group[t_fg[t_keep]]
    num_units = int(scored.sum())
    s_start = torch.cat([s_unit.new_zeros(1), torch.cumsum(s_count[scored], 0)])
    t_start = torch.cat([t_unit.new_zeros(1), torch.cumsum(t_count[scored], 0)])
    s_ids = alignment.student_ids.reshape(-1)
    t_ids = alignment.teacher_ids.reshape(-1)
    s_parts, t_parts = parts

    def chunks():
        for part in chunk_slices(num_units, chunk_size):
            s_rows = slice(int(s_start[part.start]), int(s_start[part.stop]))
            t_rows = slice(int(t_start[part.start]), int(t_start[part.stop]))
            units = torch.arange(part.start, part.stop, device=s_pos.device)
            s_local = s_unit[s_rows] - part.start
            t_local = t_unit[t_rows] - part.start
            teacher = MergedRows(rows_at(teacher_logits.detach(), t_pos[t_rows]), t_ids[t_pos[t_rows]], t_local,
                                 merge, t_parts, teacher_temperature)
            s_realised = s_ids[s_pos[s_rows]]

            def fn(rows, needs_grad, teacher=teacher, s_local=s_local, s_realised=s_realised, units=units):
                student = MergedRows(rows, s_realised, s_local, merge, s_parts, temperature)
                losses, grad_log_probs, grad_log_mass = pair_fn(student, teacher, units, needs_grad)
                return losses, (student.logits_grad(grad_log_probs, grad_log_mass) if needs_grad else None)

            yield Chunk(s_pos[s_rows], units, s_unit[s_rows], fn, closed_form=True)

    values = chunked_row_loss(student_logits, num_units, chunks)
    groups = scored.nonzero().squeeze(-1)
    return UnitLosses(values, groups // num_groups, groups % num_groups, (batch, max(num_groups, 1)))


def one_group_per_position(mask: torch.Tensor) -> AlignedGroups:
    """Positions paired one to one (same `[B, T]` on both sides) as span groups of one token each: group `g` of
    sample `b` is its `g`-th masked position."""
    group = torch.where(mask, mask.long().cumsum(-1) - 1, torch.full_like(mask, -1, dtype=torch.long))
    ids = torch.zeros_like(group)
    return AlignedGroups(group, group, ids, ids)


def _check_alignment(alignment: AlignedGroups, student_logits, teacher_logits, mask) -> None:
    if not isinstance(alignment, AlignedGroups):
        raise TypeError(f"alignment must be an AlignedGroups, got {type(alignment).__name__}")
    pairs = (
        ("student_group", alignment.student_group, student_logits),
        ("student_ids", alignment.student_ids, student_logits),
        ("teacher_group", alignment.teacher_group, teacher_logits),
        ("teacher_ids", alignment.teacher_ids, teacher_logits),
    )
    for name, tensor, logits in pairs:
        if tuple(tensor.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"alignment.{name} has shape {tuple(tensor.shape)}, expected {tuple(logits.shape[:2])} ([B, T] of "
                "the matching logits)"
            )
    for name, ids, logits in (("student_ids", alignment.student_ids, student_logits),
                              ("teacher_ids", alignment.teacher_ids, teacher_logits)):
        grouped = (alignment.student_group if name == "student_ids" else alignment.teacher_group) >= 0
        used = ids[grouped]
        if used.numel() and (used.min() < 0 or used.max() >= logits.shape[-1]):
            raise ValueError(f"alignment.{name}: grouped positions hold ids outside [0, {logits.shape[-1]})")
    if (alignment.student_group >= 0).logical_and(~mask).any():
        b, t = (alignment.student_group >= 0).logical_and(~mask).nonzero()[0].tolist()
        raise ValueError(f"alignment groups student position (sample {b}, position {t}) which the mask excludes")
