"""The losses against plain float64 references, and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import losses
from tests import reference as ref

TOKEN_LOSSES = {
    "forward_kl": (losses.forward_kl, {}),
    "reverse_kl": (losses.reverse_kl, {}),
    "jsd": (losses.generalized_jsd, {"beta": 0.3}),
    "skew_kl": (losses.skew_kl, {"alpha": 0.2}),
    "skew_reverse_kl": (losses.skew_reverse_kl, {"alpha": 0.2}),
    "tvd": (losses.tvd, {}),
    "uld": (losses.uld, {}),
}


def _inputs(seed: int, batch=2, length=4, vocab=7, teacher_vocab=None, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    student = (scale * torch.randn(batch, length, vocab, generator=g, dtype=torch.float64)).requires_grad_(True)
    teacher = scale * torch.randn(batch, length, teacher_vocab or vocab, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, length, generator=g) > 0.3
    mask[0, 0] = True
    return student, teacher, mask


@pytest.mark.parametrize("name", TOKEN_LOSSES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_float64_reference_values_and_gradients(name, temperature):
    fn, kw = TOKEN_LOSSES[name]
    student, teacher, mask = _inputs(seed=3)
    ours = fn(student, teacher, mask, temperature=temperature, chunk_size=3, **kw)
    ref_kw = {"beta": kw["beta"]} if "beta" in kw else ({"alpha": kw["alpha"]} if "alpha" in kw else {})
    theirs = ref.token_loss(name, student, teacher, mask, temperature, **ref_kw)
    assert abs(ours.item() - theirs.item()) < 1e-6
    (g_ours,) = torch.autograd.grad(ours, student)
    (g_ref,) = torch.autograd.grad(theirs, student)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def test_uld_any_vocabulary_sizes_against_reference():
    for vs, vt in ((5, 9), (9, 5)):
        student, teacher, mask = _inputs(seed=4, vocab=vs, teacher_vocab=vt)
        ours = losses.uld(student, teacher, mask)
        assert abs(ours.item() - ref.token_loss("uld", student, teacher, mask).item()) < 1e-6


def test_sparse_forward_kl_against_reference_and_full_kl():
    student, teacher, mask = _inputs(seed=5, vocab=9)
    top = teacher.log_softmax(-1).topk(4, dim=-1)
    ours = losses.sparse_forward_kl(student, top.indices, top.values, mask, chunk_size=2)
    theirs = ref.sparse_forward_kl(student, top.indices, top.values, mask)
    assert abs(ours.item() - theirs.item()) < 1e-6
    (g_ours,) = torch.autograd.grad(ours, student)
    (g_ref,) = torch.autograd.grad(theirs, student)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)
    full = teacher.log_softmax(-1).topk(9, dim=-1)
    assert abs(losses.sparse_forward_kl(student, full.indices, full.values, mask).item()
               - losses.forward_kl(student, teacher, mask).item()) < 1e-9


def test_sparse_forward_kl_rejects_logits_instead_of_log_probs():
    student, teacher, mask = _inputs(seed=6)
    top = teacher.topk(3, dim=-1)  # raw logits: mass > 1
    with pytest.raises(ValueError, match="probability mass"):
        losses.sparse_forward_kl(student, top.indices, top.values.abs() + 1, mask)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(sorted(TOKEN_LOSSES)), scale=st.floats(0.1, 8.0))
def test_non_negative_and_zero_on_equal_distributions(seed, name, scale):
    fn, kw = TOKEN_LOSSES[name]
    student, teacher, mask = _inputs(seed, scale=scale)
    assert fn(student, teacher, mask, **kw).item() >= -1e-12
    same = fn(teacher.clone().requires_grad_(True), teacher, mask, **kw)
    assert abs(same.item()) < 1e-9


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_jsd_endpoints_are_exact_kls_and_interior_is_continuous(seed):
    student, teacher, mask = _inputs(seed)
    fkl = losses.forward_kl(student, teacher, mask).item()
    rkl = losses.reverse_kl(student, teacher, mask).item()
    assert losses.generalized_jsd(student, teacher, mask, beta=0.0).item() == pytest.approx(fkl, abs=1e-12)
    assert losses.generalized_jsd(student, teacher, mask, beta=1.0).item() == pytest.approx(rkl, abs=1e-12)
    # the interior formula vanishes like β·KL(T‖S) near β = 0 and (1−β)·KL(S‖T) near β = 1
    eps = 1e-8
    assert losses.generalized_jsd(student, teacher, mask, beta=eps).item() / eps == pytest.approx(fkl, rel=1e-3)
    assert losses.generalized_jsd(student, teacher, mask, beta=1 - eps).item() / eps == pytest.approx(rkl, rel=1e-3)


def test_skew_kls_reduce_to_kls_at_alpha_zero_and_are_bounded():
    student, teacher, mask = _inputs(seed=8, scale=6.0)
    assert losses.skew_kl(student, teacher, mask, alpha=0.0).item() == pytest.approx(
        losses.forward_kl(student, teacher, mask).item(), abs=1e-12)
    assert losses.skew_reverse_kl(student, teacher, mask, alpha=0.0).item() == pytest.approx(
        losses.reverse_kl(student, teacher, mask).item(), abs=1e-12)
    assert losses.skew_kl(student, teacher, mask, alpha=0.1).item() <= -math.log(0.1)
    assert 0 <= losses.tvd(student, teacher, mask).item() <= 1


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_uld_invariant_to_permuting_either_vocabulary(seed):
    student, teacher, mask = _inputs(seed, vocab=6, teacher_vocab=9)
    g = torch.Generator().manual_seed(seed)
    base = losses.uld(student, teacher, mask).item()
    permuted = losses.uld(student[..., torch.randperm(6, generator=g)], teacher[..., torch.randperm(9, generator=g)],
                          mask).item()
    assert permuted == pytest.approx(base, abs=1e-12)


@pytest.mark.parametrize("name", TOKEN_LOSSES)
def test_finite_values_and_gradients_with_masked_positions_and_neg_inf_logits(name):
    fn, kw = TOKEN_LOSSES[name]
    student, teacher, mask = _inputs(seed=9)
    student = student.detach().clone()
    teacher = teacher.clone()
    student[..., 0] = -math.inf  # a vocabulary entry the student may never emit
    teacher[..., 0] = -math.inf  # ... nor the teacher
    teacher[..., 1] = -math.inf  # the teacher alone rules out entry 1
    student[1, 1] = math.nan  # garbage at a masked position must not leak
    mask[1, 1] = False
    student.requires_grad_(True)
    loss = fn(student, teacher, mask, **kw)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all()
    assert (student.grad[1, 1] == 0).all()


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "uld"])
def test_chunk_size_does_not_change_results(name):
    fn, kw = TOKEN_LOSSES[name]
    student, teacher, mask = _inputs(seed=10, batch=3, length=7)
    results = []
    for chunk in (1, 4, 1000):
        loss = fn(student, teacher, mask, chunk_size=chunk, **kw)
        (grad,) = torch.autograd.grad(loss, student)
        results.append((loss.item(), grad))
    for value, grad in results[1:]:
        assert value == pytest.approx(results[0][0], abs=1e-12)
        assert torch.allclose(grad, results[0][1], atol=1e-12)


@pytest.mark.parametrize("name", ["forward_kl", "uld"])
def test_sliced_logits_give_the_same_loss_and_gradient_as_contiguous_ones(name):
    """`logits[:, :-1]` (not flattenable as a view) is read row by row, never copied whole."""
    fn, kw = TOKEN_LOSSES[name]
    student, teacher, mask = _inputs(seed=11, batch=3, length=8)
    results = []
    for contiguous in (False, True):
        s, t = student[:, :-1], teacher[:, 1:]
        if contiguous:
            s, t = s.contiguous(), t.contiguous()
        loss = fn(s, t, mask[:, :-1], **kw)
        results.append((loss, *torch.autograd.grad(loss, student)))
    assert not student[:, :-1].is_contiguous()
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_reductions_sum_none_and_num_items():
    student, teacher, mask = _inputs(seed=11)
    per = losses.forward_kl(student, teacher, mask, reduction="none")
    assert per.shape == mask.shape
    assert (per[~mask] == 0).all()
    total = losses.forward_kl(student, teacher, mask, reduction="sum")
    assert total.item() == pytest.approx(per.sum().item(), abs=1e-12)
    mean = losses.forward_kl(student, teacher, mask)
    assert mean.item() == pytest.approx(total.item() / mask.sum().item(), abs=1e-12)
    assert losses.forward_kl(student, teacher, mask, num_items_in_batch=40).item() == pytest.approx(
        total.item() / 40, abs=1e-12)
    # the per-position gradient of 'none' composes with arbitrary weights
    weights = torch.rand(mask.shape, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad((per * weights).sum(), student)
    ref_per = torch.stack([ref.kl(ref.probs(teacher[b, t]), ref.probs(student[b, t])) * weights[b, t]
                           for b in range(2) for t in range(4) if mask[b, t]]).sum()
    (g_ref,) = torch.autograd.grad(ref_per, student)
    assert torch.allclose(g_ours, g_ref, atol=1e-9)


def test_bf16_logits_are_upcast_and_give_a_bf16_gradient():
    student, teacher, mask = _inputs(seed=12)
    s16 = student.detach().bfloat16().requires_grad_(True)
    loss = losses.generalized_jsd(s16, teacher.bfloat16(), mask)
    loss.backward()
    assert loss.dtype == torch.float32 and s16.grad.dtype == torch.bfloat16
    expected = losses.generalized_jsd(s16.detach().double(), teacher.bfloat16().double(), mask)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_all_masked_batch_gives_zero_loss_and_zero_gradient():
    student, teacher, mask = _inputs(seed=13)
    loss = losses.reverse_kl(student, teacher, torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and (student.grad == 0).all()


def test_teacher_is_not_differentiated():
    student, teacher, mask = _inputs(seed=14)
    teacher.requires_grad_(True)
    losses.forward_kl(student, teacher, mask).backward()
    assert teacher.grad is None and student.grad is not None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, t, m: losses.forward_kl(s, t[:, :3], m), "share \\[B, T\\]"),
        (lambda s, t, m: losses.forward_kl(s, t[..., :5], m), "vocabulary"),
        (lambda s, t, m: losses.forward_kl(s, t, m[:, :3]), "mask must have shape"),
        (lambda s, t, m: losses.forward_kl(s[0], t, m), "\\[B, T, V\\]"),
        (lambda s, t, m: losses.generalized_jsd(s, t, m, beta=1.5), "beta must lie in \\[0, 1\\]"),
        (lambda s, t, m: losses.skew_kl(s, t, m, alpha=-0.1), "alpha"),
        (lambda s, t, m: losses.tvd(s, t, m, temperature=0), "temperature must be > 0"),
        (lambda s, t, m: losses.tvd(s, t, m, reduction="avg"), "reduction must be one of"),
        (lambda s, t, m: losses.tvd(s, t, m, reduction="sum", num_items_in_batch=3), "num_items_in_batch"),
        (lambda s, t, m: losses.sparse_forward_kl(s, t.topk(2).indices[:, :2], t.topk(2).values, m), "shape"),
        (lambda s, t, m: losses.sparse_forward_kl(s, t.topk(2).indices + 50, t.log_softmax(-1).topk(2).values, m),
         "outside the student vocabulary"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    student, teacher, mask = _inputs(seed=15)
    with pytest.raises(ValueError, match=message):
        call(student, teacher, mask)


def test_backward_twice_is_refused_clearly():
    student, teacher, mask = _inputs(seed=16)
    loss = losses.forward_kl(student, teacher, mask)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
