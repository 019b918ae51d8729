"""Forward KL against a sparse teacher: its top-k log-probabilities plus one tail bucket.

An offline teacher cache stores, per position, the ids and log-probabilities of the teacher's k most likely
tokens. The mass they miss, 1 − Σ_k p_T(k), is kept as one *tail bucket*; the student's tail bucket is its mass
outside the same k ids. The loss is the exact KL between these two (k+1)-outcome distributions:

    L = Σ_{i ≤ k} p_T(i) (log p_T(i) − log p_S(i)) + p_T(tail) (log p_T(tail) − log p_S(tail))

Nothing is renormalised: with k = V it is the full forward KL, and it is 0 iff the student matches the teacher
on the k ids (and therefore on the tail mass).
"""

from __future__ import annotations

import torch

from distill.losses import divergences as div
from distill.losses._common import (
    Reduction,
    check_logits,
    check_mask,
    check_positive,
    check_reduction,
    reduce_units,
)
from distill.losses.engine import resolve_chunk_size
from distill.losses.units import token_units

_MASS_TOLERANCE = 1e-4


def sparse_forward_kl(
    student_logits: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Forward KL of `student_logits [B, T, V]` to a top-k teacher: `teacher_topk_ids [B, T, k]` (long) and
    `teacher_topk_logprobs [B, T, k]` (log-probabilities at the cache's temperature, not logits)."""
    check_logits("student_logits", student_logits)
    mask = check_mask(mask, student_logits)
    check_reduction(reduction, num_items_in_batch)
    temperature = check_positive("temperature", temperature)
    chunk_size = resolve_chunk_size(chunk_size, student_logits.shape[-1])
    expected = tuple(student_logits.shape[:2])
    for name, tensor in (("teacher_topk_ids", teacher_topk_ids), ("teacher_topk_logprobs", teacher_topk_logprobs)):
        if tensor.dim() != 3 or tuple(tensor.shape[:2]) != expected:
            raise ValueError(f"{name} must have shape [B, T, k] with [B, T] = {expected}, got {tuple(tensor.shape)}")
    if teacher_topk_ids.shape != teacher_topk_logprobs.shape:
        raise ValueError(
            f"teacher_topk_ids {tuple(teacher_topk_ids.shape)} and teacher_topk_logprobs "
            f"{tuple(teacher_topk_logprobs.shape)} must have the same shape"
        )
    vocab = student_logits.shape[-1]
    scored_ids = teacher_topk_ids[mask]
    if scored_ids.numel() and (scored_ids.min() < 0 or scored_ids.max() >= vocab):
        raise ValueError(f"teacher_topk_ids hold ids outside the student vocabulary [0, {vocab})")
    _check_mass(teacher_topk_logprobs, mask)
    # ids and log-probs travel together through the chunking; float64 holds every id exactly
    packed = torch.cat([teacher_topk_ids.double(), teacher_topk_logprobs.double()], dim=-1)
    k = teacher_topk_ids.shape[-1]
    compute_dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32

    def teacher_buckets(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, logp = rows[:, :k].long(), rows[:, k:].to(compute_dtype)
        return ids, torch.cat([logp, div.tail_log_prob(logp)], dim=-1)

    def pair(student_logp, teacher, _units):
        ids, teacher_logp = teacher
        return div.forward_kl_rows(div.bucket_log_probs(student_logp, ids), teacher_logp)

    units = token_units(pair, student_logits, packed, mask, temperature, teacher_buckets, chunk_size)
    return reduce_units(units.values, reduction, num_items_in_batch, units.batch, units.index, units.layout)


def _check_mass(teacher_topk_logprobs: torch.Tensor, mask: torch.Tensor) -> None:
    """Top-k log-probabilities hold at most unit mass; more means logits or a renormalised cache were passed."""
    mass = torch.logsumexp(teacher_topk_logprobs.detach().double(), dim=-1).exp()
    bad = mask & (mass > 1.0 + _MASS_TOLERANCE)
    if bad.any():
        b, t = bad.nonzero()[0].tolist()
        raise ValueError(
            f"teacher_topk_logprobs at (sample {b}, position {t}) carry probability mass {mass[b, t].item():.4f} > 1: "
            "pass log-probabilities (log_softmax), not logits"
        )
