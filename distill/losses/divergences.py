"""Row-wise divergences between a student and a teacher distribution, on log-probabilities.

Every function takes `student_logp [n, V]` and `teacher_logp [n, V]` (log-probabilities, `-inf` allowed for
impossible tokens) and returns `[n]`, one value per row. Rows may be sub-normalised (merged span groups carry
less than unit mass); the formulas are applied as written. Terms with zero mass contribute exactly 0 and keep
finite gradients: `-inf` log-probabilities are floored at the dtype's most negative finite value before any
arithmetic, so `0 * log 0` never becomes NaN.
"""

from __future__ import annotations

import math

import torch

from distill.losses.sorting import sorted_descending, sorted_l1_rows  # noqa: F401  (the ULD distance, re-exported)


def _finite(logp: torch.Tensor) -> torch.Tensor:
    return logp.clamp(min=torch.finfo(logp.dtype).min)


def _kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)), per row."""
    p_logp = _finite(p_logp)
    return (p_logp.exp() * (p_logp - _finite(q_logp))).sum(-1)


def _mixture(a_logp: torch.Tensor, b_logp: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w·a + (1−w)·b), computed in log space."""
    return torch.logaddexp(_finite(a_logp) + math.log(weight_a), _finite(b_logp) + math.log1p(-weight_a))


def forward_kl_rows(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_T ‖ p_S): mode-covering; the student is pushed to put mass wherever the teacher does."""
    return _kl(teacher_logp, student_logp)


def reverse_kl_rows(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_S ‖ p_T): mode-seeking; the student is penalised for mass where the teacher has little."""
    return _kl(student_logp, teacher_logp)


def jsd_rows(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD: β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M) with M = β·p_T + (1−β)·p_S.

    The interior formula vanishes at both ends; the endpoints are defined as their normalised limits:
    β = 0 gives KL(p_T ‖ p_S) (forward) and β = 1 gives KL(p_S ‖ p_T) (reverse), exactly.
    """
    if beta == 0.0:
        return forward_kl_rows(student_logp, teacher_logp)
    if beta == 1.0:
        return reverse_kl_rows(student_logp, teacher_logp)
    return _InteriorJSD.apply(student_logp, teacher_logp, beta)


class _InteriorJSD(torch.autograd.Function):
    """The generalized JSD for 0 < β < 1 in a few passes over the rows, with its gradient in closed form.

    J = β·Σ p_T (log p_T − log M) + (1−β)·Σ p_S (log p_S − log M), M = β·p_T + (1−β)·p_S. Since the terms in
    log M cancel against M's own derivative, ∂J/∂p_S = (1−β)(log p_S − log M), so w.r.t. the log-probabilities
    ∂J/∂log p_S = (1−β)·p_S·(log p_S − log M) and ∂J/∂log p_T = β·p_T·(log p_T − log M): the very terms summed
    for the value. Entries with zero probability contribute 0 (and NaN stays NaN).
    """

    @staticmethod
    def forward(ctx, student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float) -> torch.Tensor:
        s, t = student_logp.exp(), teacher_logp.exp()
        s_terms, t_terms = _interior_terms(student_logp, s, teacher_logp, t, beta)
        s_terms.masked_fill_(s == 0, 0.0)
        t_terms.masked_fill_(t == 0, 0.0)
        ctx.beta = beta
        ctx.save_for_backward(s_terms if ctx.needs_input_grad[0] else None,
                              t_terms if ctx.needs_input_grad[1] else None)
        return beta * t_terms.sum(-1) + (1.0 - beta) * s_terms.sum(-1)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        s_terms, t_terms = ctx.saved_tensors
        scale = grad_output.unsqueeze(-1)
        return (None if s_terms is None else s_terms * ((1.0 - ctx.beta) * scale),
                None if t_terms is None else t_terms * (ctx.beta * scale), None)


def _interior_terms(student_logp, student_p, teacher_logp, teacher_p, beta: float):
    """`s·(log s − log M)` and `t·(log t − log M)` elementwise, `M = β·t + (1−β)·s` (log M floored at the most
    negative finite value). Entries with `p = 0` and `log p = −inf` come out NaN: callers zero or avoid them."""
    log_m = (teacher_p * beta).add_(student_p, alpha=1.0 - beta).log_().clamp_(min=torch.finfo(student_p.dtype).min)
    return (student_logp - log_m).mul_(student_p), (teacher_logp - log_m).mul_(teacher_p)


def jsd_and_grad(student_logp: torch.Tensor, student_p: torch.Tensor, teacher_logp: torch.Tensor,
                 teacher_p: torch.Tensor, beta: float, want_grad: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`jsd_rows` `[n]` and its gradient w.r.t. the student log-probabilities `[n, C]`, in closed form, from both
    sides' log-probabilities (finite: floored, not −inf) and probabilities. Entries are taken as they are (a
    sub-normalised row, or one part of a row's columns, is summed as given), so a row's value is the sum over
    any split of its columns:

        0 < β < 1:  J = β·Σ t (log t − log M) + (1−β)·Σ s (log s − log M),   ∂J/∂log s = (1−β)·s·(log s − log M)
        β = 0:      J = Σ t (log t − log s),                                 ∂J/∂log s = −t
        β = 1:      J = Σ s (log s − log t),                                 ∂J/∂log s = s·(log s − log t + 1)
    """
    if beta == 0.0:
        value = (teacher_logp - student_logp).mul_(teacher_p).sum(-1)
        return value, (teacher_p.neg() if want_grad else None)
    if beta == 1.0:
        log_ratio = student_logp - teacher_logp
        value = (log_ratio * student_p).sum(-1)
        return value, (log_ratio.add_(1.0).mul_(student_p) if want_grad else None)
    s_terms, t_terms = _interior_terms(student_logp, student_p, teacher_logp, teacher_p, beta)
    value = t_terms.sum(-1).mul_(beta).add_(s_terms.sum(-1), alpha=1.0 - beta)
    return value, (s_terms.mul_(1.0 - beta) if want_grad else None)


def skew_kl_rows(student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """α-skew KL (DistiLLM): KL(p_T ‖ α·p_T + (1−α)·p_S); α = 0 is forward KL. Bounded by −log α for α > 0."""
    if alpha == 0.0:
        return forward_kl_rows(student_logp, teacher_logp)
    return _kl(teacher_logp, _mixture(teacher_logp, student_logp, alpha))


def skew_reverse_kl_rows(student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """α-skew reverse KL (DistiLLM): KL(p_S ‖ (1−α)·p_T + α·p_S); α = 0 is reverse KL."""
    if alpha == 0.0:
        return reverse_kl_rows(student_logp, teacher_logp)
    return _kl(student_logp, _mixture(student_logp, teacher_logp, alpha))


def tvd_rows(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Total variation distance: ½·Σ_v |p_T(v) − p_S(v)|, in [0, 1] for normalised rows."""
    return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(-1)


def bucket_log_probs(logp: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The distribution over `columns` plus one bucket holding all remaining mass: `[n, V] -> [n, C + 1]`.

    The bucket is log(1 − Σ_c p(c)), computed stably, and `-inf` when the columns hold all the mass up to
    round-off (a remainder within a few ulps of 1 is noise, not mass). Nothing is renormalised: a sub-normalised
    row keeps its deficit in the bucket.
    """
    picked = logp.index_select(-1, columns) if columns.dim() == 1 else logp.gather(-1, columns)
    return torch.cat([picked, tail_log_prob(picked)], dim=-1)


def tail_log_prob(picked_logp: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ_k p_k) of `[n, k]` log-probabilities, `[n, 1]`; −inf when the remainder is below round-off."""
    kept = torch.logsumexp(picked_logp, dim=-1, keepdim=True)
    noise = -8 * torch.finfo(picked_logp.dtype).eps
    return log1mexp(torch.where(kept > noise, torch.zeros_like(kept), kept))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x ≤ 0, accurate on both ends (Mächler 2012); −inf at x = 0 with a zero gradient there."""
    inside = x < 0
    x = torch.where(inside, x, torch.full_like(x, -1.0))
    small = x > -math.log(2.0)
    near_zero = torch.log(-torch.expm1(torch.where(small, x, torch.full_like(x, -1.0))))
    far = torch.log1p(-torch.exp(torch.where(small, torch.full_like(x, -1.0), x)))
    return torch.where(inside, torch.where(small, near_zero, far), torch.full_like(x, -math.inf))
