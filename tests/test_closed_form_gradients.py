"""The closed-form pieces of the cross-tokenizer losses against autograd: merged rows, JSD parts, ULD."""

from __future__ import annotations

import pytest
import torch

from distill.align import merge_span_log_probs
from distill.losses import divergences as div
from distill.losses import sorting
from distill.losses.merged_rows import MergedRows

IDS = torch.tensor([4, 1, 0, 2, 2, 3, 1, 5])
GROUPS = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])  # groups of 2, 1, 3, 1 and 1 rows


def _logits(seed: int, rows: int = 8, vocab: int = 6, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(rows, vocab, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("strategy", ["bayesian", "observed"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("split", [False, True])
def test_merged_rows_match_the_autograd_merge_in_values_and_gradients(strategy, temperature, split):
    logits = _logits(0)
    parts = (torch.tensor([5, 0, 3]), torch.tensor([1, 4, 2])) if split else (None,)
    merged = MergedRows(logits, IDS, GROUPS, strategy, parts, temperature)

    x = logits.clone().requires_grad_(True)
    reference = merge_span_log_probs(torch.log_softmax(x / temperature, -1), IDS, GROUPS, strategy)
    columns = [reference if cols is None else reference[:, cols] for cols in parts]
    for i, ref_part in enumerate(columns):
        assert torch.allclose(merged.log_probs(i), ref_part, atol=1e-12)
        assert torch.allclose(merged.probs[i], ref_part.exp(), atol=1e-12)
    log_mass = torch.logsumexp(reference, -1)  # the merged row's total mass is e^π
    assert torch.allclose(merged.log_mass, log_mass, atol=1e-12)

    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(part.shape, dtype=torch.float64, generator=g) for part in columns]
    mass_weight = torch.randn(log_mass.shape, dtype=torch.float64, generator=g)
    objective = sum((w * part).sum() for w, part in zip(weights, columns, strict=True)) + (mass_weight * log_mass).sum()
    (expected,) = torch.autograd.grad(objective, x)
    # ∂objective/∂π beyond the parts: the parts already carry ∂ℓ/∂π = 1, so only the explicit log-mass term
    ours = merged.logits_grad(tuple(w.clone() for w in weights), mass_weight)
    assert torch.allclose(ours, expected, atol=1e-10)


def test_merged_rows_of_single_tokens_are_log_softmax_and_need_no_copy_of_the_logits():
    logits = _logits(2)
    merged = MergedRows(logits, IDS, torch.arange(8), "bayesian", (None,))
    assert torch.equal(merged.log_mass, torch.zeros(8, dtype=torch.float64))
    assert torch.allclose(merged.log_probs(0), torch.log_softmax(logits, -1), atol=1e-12)
    assert torch.allclose(merged.probs[0], torch.softmax(logits, -1), atol=1e-12)


def test_merged_rows_stay_finite_for_tiny_group_mass_and_banned_tokens():
    """π far below float32's range (e^{−π} overflows) and −inf logits: finite values and gradients."""
    logits = _logits(3).float()
    logits[0, 4] = -200.0  # the realised token of row 0 is nearly impossible: π ≈ −200 for group 0
    logits[1, 2] = -torch.inf  # a banned token in the base row
    merged = MergedRows(logits, IDS, GROUPS, "bayesian", (None,))
    assert merged.log_mass[0] < -150
    assert torch.isfinite(merged.log_probs(0)).all() and merged.probs[0][0, 2] == 0
    grad = merged.logits_grad((torch.ones_like(merged.probs[0]),), torch.ones_like(merged.log_mass))
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_jsd_and_grad_matches_autograd_and_splits_over_column_parts(beta):
    g = torch.Generator().manual_seed(4)
    s_logp = torch.log_softmax(torch.randn(3, 9, dtype=torch.float64, generator=g), -1) - 0.2  # sub-normalised
    t_logp = torch.log_softmax(torch.randn(3, 9, dtype=torch.float64, generator=g), -1)
    x = s_logp.clone().requires_grad_(True)
    reference = div.jsd_rows(x, t_logp, beta)
    (expected,) = torch.autograd.grad(reference.sum(), x)
    value, grad = div.jsd_and_grad(s_logp, s_logp.exp(), t_logp, t_logp.exp(), beta)
    assert torch.allclose(value, reference.detach(), atol=1e-12)
    assert torch.allclose(grad, expected, atol=1e-12)
    halves = [div.jsd_and_grad(s_logp[:, c], s_logp[:, c].exp(), t_logp[:, c], t_logp[:, c].exp(), beta)[0]
              for c in (slice(0, 4), slice(4, 9))]
    assert torch.allclose(halves[0] + halves[1], value, atol=1e-12)


@pytest.mark.parametrize("binned", [True, False])
def test_sorted_l1_and_grad_matches_autograd_on_both_routes(binned, monkeypatch):
    if not binned:  # the route a GPU takes: autograd through torch.sort
        monkeypatch.setattr(sorting, "_binnable", lambda *_: False)
    g = torch.Generator().manual_seed(5)
    student = torch.softmax(3 * torch.randn(4, 30, generator=g), -1)
    teacher = torch.softmax(3 * torch.randn(4, 45, generator=g), -1)
    x = student.clone().requires_grad_(True)
    reference = sorting._by_sorting(x, teacher)
    (expected,) = torch.autograd.grad(reference.sum(), x)
    value, grad = sorting.sorted_l1_and_grad(student, teacher)
    assert torch.allclose(value, reference.detach(), atol=1e-6)
    assert torch.allclose(grad, expected)
    value_only, none = sorting.sorted_l1_and_grad(student, teacher, want_grad=False)
    assert none is None and torch.equal(value_only, value)
