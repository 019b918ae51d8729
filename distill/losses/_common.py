"""Input checks and reductions shared by the public losses.

Reductions over the scored units (target positions, or aligned span groups):

- `"mean"`: Σ_units loss / #units — or Σ / `num_items_in_batch` when given, the form that stays correct under
  gradient accumulation (each micro-batch divides by the token count of the whole optimiser step);
- `"sum"`: Σ_units loss;
- `"none"`: per-unit values laid out as `[B, L]` (L = T for token losses, the group count for group losses),
  0 where nothing is scored.
"""

from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


def check_logits(name: str, logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a [B, T, V] tensor, got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {logits.dtype}")


def check_mask(mask: torch.Tensor, logits: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """The mask as bool `[B, T]`, matching the logits' first two dimensions."""
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(logits.shape[:2]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must have shape {tuple(logits.shape[:2])} ([B, T] of the logits), got {shape}")
    return mask.to(device=logits.device, dtype=torch.bool)


def check_same_positions(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} must "
            "share [B, T]: align positions first (or pass an alignment to a cross-tokenizer loss)"
        )


def check_same_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student vocabulary {student_logits.shape[-1]} != teacher vocabulary {teacher_logits.shape[-1]}: this "
            "loss compares the same tokens; use `uld` or `gold` for different tokenizers"
        )


def check_positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def check_unit_interval(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def check_reduction(reduction: str, num_items_in_batch) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if num_items_in_batch is not None and reduction != "mean":
        raise ValueError("num_items_in_batch is only used with reduction='mean'")


def reduce_units(
    per_unit: torch.Tensor,
    reduction: Reduction,
    num_items_in_batch: int | torch.Tensor | None,
    unit_batch: torch.Tensor,
    unit_index: torch.Tensor,
    layout: tuple[int, int],
) -> torch.Tensor:
    """Reduce `[N]` unit losses; for "none", scatter them to `layout` at (`unit_batch`, `unit_index`)."""
    if reduction == "sum":
        return per_unit.sum()
    if reduction == "mean":
        if num_items_in_batch is not None:
            return per_unit.sum() / num_items_in_batch
        return per_unit.sum() / max(per_unit.numel(), 1)
    out = per_unit.new_zeros(layout)
    return out.index_put((unit_batch, unit_index), per_unit)
