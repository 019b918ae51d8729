"""Same-tokenizer distillation objectives over full teacher distributions.

Every loss takes `student_logits [B, T, V]`, `teacher_logits [B, T, V]` and `mask [B, T]` (True where a target
is scored), with logits already aligned to their targets (logits at t predict token t). Both sides are tempered,
p = softmax(z / τ) (`teacher_temperature` defaults to `temperature`). Reductions: see `losses._common`. The
teacher is treated as a constant. Work is chunked over scored positions (`chunk_size` rows at a time), so the
memory a loss adds beyond the logits and their gradient does not grow with B·T.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from distill.losses import divergences as div
from distill.losses._common import (
    Reduction,
    check_logits,
    check_mask,
    check_positive,
    check_reduction,
    check_same_positions,
    check_same_vocab,
    check_unit_interval,
    reduce_units,
)
from distill.losses.engine import log_probs, resolve_chunk_size
from distill.losses.units import token_units

RowDivergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def divergence_loss(
    row_divergence: RowDivergence,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    teacher_temperature: float | None = None,
    reduction: Reduction = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Apply a row divergence `(student_logp [n, V], teacher_logp [n, V]) -> [n]` over the masked positions."""
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    check_same_positions(student_logits, teacher_logits)
    check_same_vocab(student_logits, teacher_logits)
    mask = check_mask(mask, student_logits)
    check_reduction(reduction, num_items_in_batch)
    temperature = check_positive("temperature", temperature)
    teacher_temperature = check_positive(
        "teacher_temperature", temperature if teacher_temperature is None else teacher_temperature
    )
    chunk_size = resolve_chunk_size(chunk_size, student_logits.shape[-1], teacher_logits.shape[-1])
    units = token_units(
        lambda s, t, _units: row_divergence(s, t),
        student_logits,
        teacher_logits,
        mask,
        temperature,
        partial(log_probs, temperature=teacher_temperature),
        chunk_size,
    )
    return reduce_units(units.values, reduction, num_items_in_batch, units.batch, units.index, units.layout)


def forward_kl(student_logits, teacher_logits, mask, **options) -> torch.Tensor:
    """Forward KL, KL(p_T ‖ p_S) = Σ_v p_T(v) (log p_T(v) − log p_S(v)), averaged over masked positions."""
    return divergence_loss(div.forward_kl_rows, student_logits, teacher_logits, mask, **options)


def reverse_kl(student_logits, teacher_logits, mask, **options) -> torch.Tensor:
    """Reverse KL, KL(p_S ‖ p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v)), averaged over masked positions."""
    return divergence_loss(div.reverse_kl_rows, student_logits, teacher_logits, mask, **options)


def generalized_jsd(student_logits, teacher_logits, mask, beta: float = 0.5, **options) -> torch.Tensor:
    """Generalized JSD(β) = β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M), M = β·p_T + (1−β)·p_S.

    β = 0 returns the forward KL and β = 1 the reverse KL exactly (the normalised limits, not the vanishing
    interior formula).
    """
    beta = check_unit_interval("beta", beta)
    return divergence_loss(partial(div.jsd_rows, beta=beta), student_logits, teacher_logits, mask, **options)


def skew_kl(student_logits, teacher_logits, mask, alpha: float = 0.1, **options) -> torch.Tensor:
    """α-skew KL (DistiLLM): KL(p_T ‖ α·p_T + (1−α)·p_S); α = 0 is forward KL, and the loss is ≤ −log α."""
    alpha = check_unit_interval("alpha", alpha)
    return divergence_loss(partial(div.skew_kl_rows, alpha=alpha), student_logits, teacher_logits, mask, **options)


def skew_reverse_kl(student_logits, teacher_logits, mask, alpha: float = 0.1, **options) -> torch.Tensor:
    """α-skew reverse KL (DistiLLM): KL(p_S ‖ (1−α)·p_T + α·p_S); α = 0 is reverse KL."""
    alpha = check_unit_interval("alpha", alpha)
    return divergence_loss(
        partial(div.skew_reverse_kl_rows, alpha=alpha), student_logits, teacher_logits, mask, **options
    )


def tvd(student_logits, teacher_logits, mask, **options) -> torch.Tensor:
    """Total variation distance ½·Σ_v |p_T(v) − p_S(v)|, in [0, 1] per position."""
    return divergence_loss(div.tvd_rows, student_logits, teacher_logits, mask, **options)
