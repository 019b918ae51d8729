"""ULD and GOLD over span groups, against the float64 reference, plus their properties and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import losses
from distill.align import AlignedGroups, SpanAlignment, merge_span_log_probs
from tests import reference as ref


class _Map:
    def __init__(self, student_ids, teacher_ids):
        self.student_ids, self.teacher_ids = torch.tensor(student_ids), torch.tensor(teacher_ids)
        self.num_matched = len(student_ids)


def _partition(rng: np.random.Generator, length: int, groups: int) -> np.ndarray:
    cuts = np.sort(rng.choice(np.arange(1, length), size=groups - 1, replace=False))
    return np.searchsorted(cuts, np.arange(length), side="right")


def _case(seed: int, batch=2, ts=7, tt=6, vs=8, vt=11):
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    alignments = []
    for _ in range(batch):
        n = int(rng.integers(1, min(ts, tt) + 1))
        alignments.append(SpanAlignment(_partition(rng, ts, n), _partition(rng, tt, n), n))
    s_ids = torch.randint(0, vs, (batch, ts), generator=g)
    t_ids = torch.randint(0, vt, (batch, tt), generator=g)
    groups = AlignedGroups.from_alignments(alignments, s_ids, t_ids)
    student = (2 * torch.randn(batch, ts, vs, generator=g, dtype=torch.float64)).requires_grad_(True)
    teacher = 2 * torch.randn(batch, tt, vt, generator=g, dtype=torch.float64)
    return student, teacher, groups


def _reference_mean(student, teacher, groups, strategy, row):
    rows = ref.group_rows(student, teacher, groups.student_group, groups.teacher_group, groups.student_ids,
                          groups.teacher_ids, strategy)
    return torch.stack([row(ps, pt) for ps, pt in rows]).mean()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), strategy=st.sampled_from(["bayesian", "observed"]))
def test_aligned_uld_matches_reference(seed, strategy):
    student, teacher, groups = _case(seed)
    mask = groups.student_group >= 0
    ours = losses.uld(student, teacher, mask, alignment=groups, merge=strategy, chunk_size=2)
    theirs = _reference_mean(student, teacher, groups, strategy, ref.sorted_l1)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    (g_ours,) = torch.autograd.grad(ours, student)
    (g_ref,) = torch.autograd.grad(theirs, student)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.sampled_from([0.0, 0.5, 0.9, 1.0]))
def test_aligned_gold_matches_reference(seed, beta):
    student, teacher, groups = _case(seed)
    vmap = _Map([0, 2, 3, 7], [1, 2, 5, 9])
    mask = groups.student_group >= 0
    out = losses.gold(student, teacher, mask, vmap, alignment=groups, beta=beta, chunk_size=3)
    w_m = 4 / 11
    parts = [ref.gold_row(ps, pt, vmap.student_ids, vmap.teacher_ids, beta, w_m, 1 - w_m)
             for ps, pt in ref.group_rows(student, teacher, groups.student_group, groups.teacher_group,
                                          groups.student_ids, groups.teacher_ids, "bayesian")]
    total = torch.stack([p[0] for p in parts]).mean()
    assert out.loss.item() == pytest.approx(total.item(), abs=1e-6)
    assert out.matched.item() == pytest.approx(torch.stack([p[1] for p in parts]).mean().item(), abs=1e-6)
    assert out.unmatched.item() == pytest.approx(torch.stack([p[2] for p in parts]).mean().item(), abs=1e-6)
    assert out.matched_weight == pytest.approx(w_m)
    (g_ours,) = torch.autograd.grad(out.loss, student)
    (g_ref,) = torch.autograd.grad(total, student)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def test_gold_and_uld_are_zero_when_teacher_equals_student():
    student, _, _ = _case(1, vs=8, vt=8)
    identity = AlignedGroups.positional(torch.ones(2, 7, dtype=torch.bool), torch.zeros(2, 7, dtype=torch.long),
                                        torch.zeros(2, 7, dtype=torch.long))
    mask = torch.ones(2, 7, dtype=torch.bool)
    teacher = student.detach()
    assert losses.uld(student, teacher, mask).item() == pytest.approx(0, abs=1e-12)
    out = losses.gold(student, teacher, mask, _Map([0, 1, 5], [0, 1, 5]), alignment=identity)
    assert out.loss.item() == pytest.approx(0, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_gold_is_non_negative_and_its_weights_combine_the_parts(seed):
    student, teacher, groups = _case(seed)
    out = losses.gold(student, teacher, groups.student_group >= 0, _Map([1, 4], [3, 0]), alignment=groups,
                      matched_weight=0.7, unmatched_weight=0.2)
    assert out.matched.item() >= -1e-12 and out.unmatched.item() >= -1e-12
    assert out.loss.item() == pytest.approx(0.7 * out.matched.item() + 0.2 * out.unmatched.item(), abs=1e-9)


def test_merge_strategies_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]], dtype=torch.float64))
    ids = torch.tensor([0, 1, 2])  # realised tokens x1=0, x2=1, x3=2
    group = torch.tensor([0, 0, 1])
    bayes = merge_span_log_probs(logp, ids, group, "bayesian").exp()
    observed = merge_span_log_probs(logp, ids, group, "observed").exp()
    # bayesian: last row of the group × p1(x1) = [0.1, 0.6, 0.3] × 0.5
    assert torch.allclose(bayes[0], torch.tensor([0.05, 0.3, 0.15], dtype=torch.float64))
    # observed: first row × p2(x2) = [0.5, 0.3, 0.2] × 0.6
    assert torch.allclose(observed[0], torch.tensor([0.3, 0.18, 0.12], dtype=torch.float64))
    assert torch.allclose(bayes[1], logp[2].exp()) and torch.allclose(observed[1], logp[2].exp())
    with pytest.raises(ValueError, match="merge strategy"):
        merge_span_log_probs(logp, ids, group, "mean")


def test_groups_with_one_side_empty_are_skipped():
    student, teacher, _ = _case(2, batch=1, ts=3, tt=2)
    alignment = SpanAlignment(np.array([0, 1, 2]), np.array([0, 2]), 3)  # group 1: student only (e.g. a BOS)
    groups = AlignedGroups.from_alignments([alignment], torch.zeros(1, 3, dtype=torch.long),
                                           torch.zeros(1, 2, dtype=torch.long))
    assert groups.student_group.tolist() == [[0, -1, 1]] and groups.teacher_group.tolist() == [[0, 1]]
    per = losses.uld(student, teacher, groups.student_group >= 0, alignment=groups, reduction="none")
    assert per.shape == (1, 2) and (per > 0).all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s, t, g, m: (s, t, AlignedGroups(g.student_group[:, :3], g.teacher_group, g.student_ids,
                                                  g.teacher_ids), m), "student_group has shape"),
        (lambda s, t, g, m: (s, t, AlignedGroups(g.student_group, g.teacher_group, g.student_ids + 100,
                                                  g.teacher_ids), m), "outside"),
        (lambda s, t, g, m: (s, t, g, torch.zeros_like(m)), "mask excludes"),
        (lambda s, t, g, m: (s, t, "groups", m), "AlignedGroups"),
    ],
)
def test_alignment_errors_are_clear(mutate, message):
    student, teacher, groups = _case(3)
    args = mutate(student, teacher, groups, groups.student_group >= 0)
    with pytest.raises((ValueError, TypeError), match=message):
        losses.uld(args[0], args[1], args[3], alignment=args[2])


def test_gold_argument_errors():
    student, teacher, groups = _case(4)
    mask = groups.student_group >= 0
    with pytest.raises(ValueError, match="both matched_weight and unmatched_weight"):
        losses.gold(student, teacher, mask, _Map([0], [0]), alignment=groups, matched_weight=1.0)
    with pytest.raises(ValueError, match="teacher logits have only 11 columns"):
        losses.gold(student, teacher, mask, _Map([0], [40]), alignment=groups)
    with pytest.raises(ValueError, match="share \\[B, T\\]"):
        losses.gold(student, teacher, mask, _Map([0], [0]))


def test_sorted_descending_orders_rows_and_passes_gradients_like_torch_sort():
    """The CPU path (numpy sort for constant rows, numpy argsort + gather otherwise) against `torch.sort`."""
    from distill.losses.divergences import sorted_descending

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(6, 301) * 4, dim=-1)
    probs[0, :50] = 0.0  # ties, including exact zeros
    probs[1, 10:20] = probs[1, 5]
    for rows in (probs, probs.double()):
        ours = rows.clone().requires_grad_(True)
        theirs = rows.clone().requires_grad_(True)
        weights = torch.linspace(1, 2, rows.shape[-1], dtype=rows.dtype)
        (sorted_descending(ours) * weights).sum().backward()
        (theirs.sort(dim=-1, descending=True).values * weights).sum().backward()
        assert torch.equal(sorted_descending(ours.detach()), theirs.detach().sort(dim=-1, descending=True).values)
        # tied values may swap places, which changes which of them gets which weight: compare per tie class
        for row in range(rows.shape[0]):
            for value in rows[row].unique():
                where = rows[row] == value
                assert torch.allclose(ours.grad[row][where].sum(), theirs.grad[row][where].sum())
