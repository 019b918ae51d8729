"""ULD and GOLD over span groups, against the float64 reference, plus their properties and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import losses
from distill.align import AlignedGroups, SpanAlignment, VocabMap, merge_span_log_probs
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


@pytest.mark.parametrize("strategy", ["bayesian", "observed"])
def test_merge_gradient_matches_finite_differences(strategy):
    """The merge adds the scalar factors in place on its gathered base rows: autograd must still be exact."""
    logits = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ids, group = torch.tensor([4, 1, 0, 2, 2, 3, 1]), torch.tensor([0, 0, 1, 2, 2, 2, 3])
    assert torch.autograd.gradcheck(
        lambda x: merge_span_log_probs(torch.log_softmax(x, -1), ids, group, strategy), (logits,)
    )


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



@pytest.fixture(params=["compiled", "torch"])
def uld_route(request, monkeypatch):
    """Run the test on both routes of the ULD bins: the compiled kernel (`losses.native`) and the torch passes."""
    monkeypatch.setenv("DISTILL_NATIVE", "1" if request.param == "compiled" else "0")
    if request.param == "compiled" and losses.native.library() is None:
        pytest.skip("no C++ compiler here: the compiled ULD kernel cannot be built")
    return request.param


@pytest.fixture
def torch_route(monkeypatch):
    """The torch passes only: for tests of their own knobs (block size, coarser and finer bins, sorted blocks)."""
    monkeypatch.setenv("DISTILL_NATIVE", "0")


def _sorted_l1_by_autograd(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ULD distance and its gradient the plain way: autograd through `torch.sort`."""
    student = student.clone().requires_grad_(True)
    s_sorted = student.sort(dim=-1, descending=True).values
    t_sorted = teacher.sort(dim=-1, descending=True).values
    shared = min(s_sorted.shape[-1], t_sorted.shape[-1])
    value = (s_sorted[:, :shared] - t_sorted[:, :shared]).abs().sum(-1)
    value = value + s_sorted[:, shared:].sum(-1) + t_sorted[:, shared:].sum(-1)
    value.sum().backward()
    return value.detach(), student.grad


def _crossing_cases():
    torch.manual_seed(0)
    cases = {}
    for name, vs, vt, scale in (("student shorter", 300, 500, 3.0), ("student longer", 500, 300, 3.0),
                                ("flat", 1000, 1000, 0.5), ("peaked", 64, 64, 8.0)):
        cases[name] = (torch.softmax(torch.randn(6, vs) * scale, -1), torch.softmax(torch.randn(6, vt) * scale, -1))
    student, teacher = cases["flat"][0].clone(), cases["flat"][1].clone()
    student[0, :50], teacher[0, :20] = 0.0, 0.0  # a run of tied zeros across a change of sign
    student[1, 10:30] = student[1, 5]  # tied values inside the row
    base = torch.softmax(torch.randn(1, 400), -1)
    student[2, :400], teacher[2, :400] = base, base * (1 + 1e-3 * torch.tensor([1.0, -1.0]).repeat(200))
    student[2, 400:], teacher[2, 400:] = 0.0, 0.0  # hundreds of crossings: the argsort-free path gives up
    cases["ties and many crossings"] = (student / student.sum(-1, keepdim=True), teacher)
    return cases


@pytest.mark.parametrize("case", list(_crossing_cases()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sorted_l1_from_value_bins_matches_autograd_through_sort(case, dtype, uld_route):
    """The CPU ULD distance (value bins, only the mixed bins sorted) against autograd through torch.sort: the
    value is the exact one (float64 sorted sum) rounded to the dtype, closer than a float32 sorted sum gets;
    the same gradient wherever ranks are unambiguous, the same sum over each tie class."""
    student, teacher = (x.to(dtype) for x in _crossing_cases()[case])
    ours = student.clone().requires_grad_(True)
    value = losses.divergences.sorted_l1_rows(ours, teacher)
    value.sum().backward()
    want_value, want_grad = _sorted_l1_by_autograd(student, teacher)
    exact, _ = _sorted_l1_by_autograd(student.double(), teacher.double())
    rtol = 2 * torch.finfo(torch.float32).eps if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(value.detach().double(), exact, rtol=rtol, atol=0)
    assert ((value.detach().double() - exact).abs() <= (want_value.double() - exact).abs() + rtol * exact).all()
    for row in range(student.shape[0]):
        classes = torch.unique(student[row], return_inverse=True)[1]
        got = torch.zeros(int(classes.max()) + 1, dtype=dtype).index_add_(0, classes, ours.grad[row])
        want = torch.zeros_like(got).index_add_(0, classes, want_grad[row])
        torch.testing.assert_close(got, want)  # a tie class's mean times its size: round-off only
        untied = torch.bincount(classes)[classes] == 1
        assert torch.equal(ours.grad[row][untied], want_grad[row][untied])


def test_sorted_l1_splits_a_tied_run_evenly_across_a_change_of_sign(uld_route):
    """Three tied student zeros at ranks 1-3 meet teacher values (+, 0, 0): c = (−1, 0, 0) there, so each zero's
    gradient is the mean −1/3 (autograd through a sort would give −1 to one of them and 0 to the others)."""
    student = torch.tensor([[1.0, 0.0, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.7, 0.3, 0.0, 0.0]])
    losses.divergences.sorted_l1_rows(student, teacher).sum().backward()
    torch.testing.assert_close(student.grad, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3]]))


def test_sorted_l1_backward_can_run_twice(uld_route):
    """The saved rank signs are not scaled in place: a second backward (retain_graph) gives the same gradient."""
    torch.manual_seed(0)
    student = torch.softmax(torch.randn(3, 50), -1).requires_grad_(True)
    value = losses.divergences.sorted_l1_rows(student, torch.softmax(torch.randn(3, 70), -1)).sum()
    (first,) = torch.autograd.grad(value * 2, student, retain_graph=True)
    (second,) = torch.autograd.grad(value * 2, student)
    assert torch.equal(first, second)


def test_sorted_l1_row_blocks_and_no_grad_give_the_same_values(monkeypatch, torch_route):
    """Rows are binned in blocks bounded by `TABLE_CELLS`; a block of one row, and a call without gradient,
    give the same values (zeros and tiny values widen the bin range: many bins per row)."""
    torch.manual_seed(0)
    student = torch.softmax(torch.randn(5, 300) * 6, -1)
    teacher = torch.softmax(torch.randn(5, 420) * 6, -1)
    student[:, :40] = 0.0
    ours = student.clone().requires_grad_(True)
    whole = losses.divergences.sorted_l1_rows(ours, teacher)
    whole.sum().backward()
    monkeypatch.setattr(losses.sorting, "TABLE_CELLS", 1)
    one_row = student.clone().requires_grad_(True)
    blocked = losses.divergences.sorted_l1_rows(one_row, teacher)
    blocked.sum().backward()
    assert torch.equal(blocked, whole) and torch.equal(one_row.grad, ours.grad)
    with torch.no_grad():
        assert torch.equal(losses.divergences.sorted_l1_rows(student, teacher), whole.detach())
    exact, want_grad = _sorted_l1_by_autograd(student.double(), teacher.double())
    torch.testing.assert_close(whole.double(), exact)
    untied = student != 0
    assert torch.equal(ours.grad[untied].double(), want_grad[untied])


def test_sorted_l1_non_finite_entries_spoil_only_their_row_and_negative_ones_are_refused(uld_route):
    torch.manual_seed(0)
    student = torch.softmax(torch.randn(3, 100), -1)
    teacher = torch.softmax(torch.randn(3, 120), -1)
    clean = losses.divergences.sorted_l1_rows(student, teacher)
    spoiled_s, spoiled_t = student.clone(), teacher.clone()
    spoiled_s[1, 5], spoiled_t[2, 7] = torch.nan, torch.inf
    value = losses.divergences.sorted_l1_rows(spoiled_s, spoiled_t)
    assert value[0] == clean[0] and value[1:].isnan().all()
    with pytest.raises(ValueError, match="teacher rows hold negative values"):
        losses.divergences.sorted_l1_rows(student, -teacher)


@pytest.mark.parametrize("case", list(_crossing_cases()))
def test_sorted_l1_binned_and_sorted_routes_agree(case, monkeypatch, torch_route):
    """Blocks whose mixed bins hold most entries are sorted instead: both routes give the same values (to
    float32 round-off) and the same gradients, tie means included."""
    student, teacher = _crossing_cases()[case]
    results = []
    for share in (1.0, 0.0):  # never sort, always sort
        monkeypatch.setattr(losses.sorting, "MAX_MIXED_SHARE", share)
        ours = student.clone().requires_grad_(True)
        value = losses.divergences.sorted_l1_rows(ours, teacher)
        value.sum().backward()
        results.append((value.detach(), ours.grad))
    (binned, binned_grad), (sorted_, sorted_grad) = results
    torch.testing.assert_close(binned, sorted_, rtol=4 * torch.finfo(torch.float32).eps, atol=0)
    assert torch.equal(binned_grad, sorted_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sorted_l1_coarser_bins_give_the_same_values_and_gradients(dtype, monkeypatch, torch_route):
    """Rows spanning many octaves get coarser bins (key bits dropped): same value to round-off, same gradient."""
    torch.manual_seed(0)
    student = torch.softmax(torch.randn(6, 400, dtype=dtype) * 3, -1) * torch.logspace(-20, 0, 6, dtype=dtype)[:, None]
    teacher = torch.softmax(torch.randn(6, 700, dtype=dtype) * 3, -1)
    results = []
    for min_bins in (1 << 16, 1):  # never coarsen, coarsen as far as allowed (7 bits)
        monkeypatch.setattr(losses.sorting, "MIN_BINS", min_bins)
        monkeypatch.setattr(losses.sorting, "ENTRIES_PER_BIN", 1 << 20)
        ours = student.clone().requires_grad_(True)
        value = losses.divergences.sorted_l1_rows(ours, teacher)
        value.sum().backward()
        results.append((value.detach(), ours.grad))
    assert losses.sorting._coarsening(30_000, 1100) == 7
    torch.testing.assert_close(results[0][0], results[1][0], rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert torch.equal(results[0][1], results[1][1])
    exact, want_grad = _sorted_l1_by_autograd(student.double(), teacher.double())
    torch.testing.assert_close(results[1][0].double(), exact)
    assert torch.equal(results[1][1].double(), want_grad)  # no ties here: autograd's gradient exactly


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sorted_l1_finer_bins_give_the_same_values_and_gradients(dtype, monkeypatch, torch_route):
    """Nearly flat rows crowd into a few bins and get finer ones (key bits added): same value to round-off, same
    gradient as with 16-bit keys, and the float64 reference's."""
    torch.manual_seed(1)
    student = torch.softmax(torch.randn(5, 3000, dtype=dtype) * 0.05, -1)
    teacher = torch.softmax(torch.randn(5, 5000, dtype=dtype) * 0.05, -1)
    results = []
    for finer_bits in (0, 4):
        monkeypatch.setattr(losses.sorting, "MAX_FINER_BITS", finer_bits)
        monkeypatch.setattr(losses.sorting, "ENTRIES_PER_FINE_BIN", 1)
        ours = student.clone().requires_grad_(True)
        value = losses.divergences.sorted_l1_rows(ours, teacher)
        value.sum().backward()
        results.append((value.detach(), ours.grad))
    assert losses.sorting._coarsening(60, 8000) == -4
    torch.testing.assert_close(results[0][0], results[1][0], rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert torch.equal(results[0][1], results[1][1])
    exact, want_grad = _sorted_l1_by_autograd(student.double(), teacher.double())
    torch.testing.assert_close(results[1][0].double(), exact)
    assert torch.equal(results[1][1].double(), want_grad)


@pytest.mark.parametrize("strategy", ["bayesian", "observed"])
def test_gold_on_teacher_logits_in_loss_order_equals_gold_in_id_order(strategy):
    """Teacher logits whose columns are `VocabMap.loss_order` (a permuted teacher head) give the same loss and
    gradient as logits in id order: the matched and unmatched columns are read as slices, and the realised
    teacher tokens of merged groups as their new columns."""
    student, teacher, groups = _case(11, batch=3, ts=9, tt=8, vs=12, vt=15)
    vmap = VocabMap.__new__(VocabMap)
    vmap.student_ids, vmap.teacher_ids = torch.tensor([0, 2, 3, 7, 11]), torch.tensor([14, 2, 5, 9, 0])
    vmap.student_size, vmap.teacher_size = 12, 15
    mask = groups.student_group >= 0
    assert ((groups.teacher_group >= 0).sum(-1) > (groups.teacher_group.amax(-1) + 1)).any()  # some merged rows
    in_ids = losses.gold(student, teacher, mask, vmap, alignment=groups, merge=strategy, chunk_size=4)
    order = vmap.loss_order(15)
    reordered = vmap.in_loss_order(15)
    in_order = losses.gold(student, teacher[..., order], mask, reordered, alignment=groups, merge=strategy,
                           chunk_size=4)
    for a, b in zip(in_ids[:3], in_order[:3], strict=True):
        torch.testing.assert_close(a, b)
    (g_ids,) = torch.autograd.grad(in_ids.loss, student)
    (g_order,) = torch.autograd.grad(in_order.loss, student)
    torch.testing.assert_close(g_ids, g_order)


def test_gold_reads_consecutive_ids_as_slices_with_the_same_result():
    """Matched ids that are one run (`a..b−1`) on both sides take the slice path of every part, student included
    (its gradient is written back through a slice): the result equals the reference."""
    student, teacher, groups = _case(4, vs=8, vt=11)
    vmap = _Map([2, 3, 4, 5], [0, 1, 2, 3])
    mask = groups.student_group >= 0
    out = losses.gold(student, teacher, mask, vmap, alignment=groups, beta=0.5)
    rows = ref.group_rows(student, teacher, groups.student_group, groups.teacher_group, groups.student_ids,
                          groups.teacher_ids, "bayesian")
    total = torch.stack([ref.gold_row(ps, pt, vmap.student_ids, vmap.teacher_ids, 0.5, 4 / 11, 7 / 11)[0]
                         for ps, pt in rows]).mean()
    assert out.loss.item() == pytest.approx(total.item(), abs=1e-6)
    (g_ours,) = torch.autograd.grad(out.loss, student)
    (g_ref,) = torch.autograd.grad(total, student)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=0)
