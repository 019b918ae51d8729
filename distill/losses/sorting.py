"""The ULD distance: the L1 distance between two sorted probability vectors, and the row sorts behind it.

`sorted_l1_rows(p_S, p_T) = Σ_r |p_S↓(r) − p_T↓(r)|`, rows sorted in decreasing order, the shorter one
zero-padded. It equals |V|·W₁ between the empirical distributions of the probability *values* (the closed-form
Wasserstein-1 of ULD), so it is invariant to any permutation of either vocabulary and works for any two
vocabulary sizes.

Its (sub)gradient w.r.t. a student probability is the sign the sorted difference has at that entry's rank:
`∂/∂p_S(i) = c(rank(i))` with `c(r) = sign(p_S↓(r) − p_T↓(r))` for `r` inside the shorter vocabulary and `c(r) = 1`
beyond it (the student's padded tail is summed). Autograd through a sort needs each entry's rank, an argsort. On
the CPU we avoid it: `c` is piecewise constant with few pieces (two sorted probability curves cross a handful
of times), so an entry's rank is only needed up to which piece it falls in, and that follows from its *value*:
an entry lies past the change at rank `b` iff it is smaller than `p_S↓(b − 1)`. A value sort (numpy's SIMD sort,
2-3× faster than an argsort here) plus a search among the few change values gives the whole gradient. Entries
tied across a change (equal values on both sides of it) get the mean of `c` over their ranks: the same sum as
any order autograd would pick, split evenly.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

#: Rows whose sign pattern `c` changes more often than this take the exact per-row path (a full rank search).
MAX_CROSSINGS = 64

_SORT_POOL: ThreadPoolExecutor | None = None


def _in_row_blocks(work, n_rows: int) -> None:
    """Run `work(rows: slice)` over row blocks in torch's thread count (numpy frees the GIL while sorting)."""
    threads = torch.get_num_threads()
    if threads <= 1 or n_rows < 2 * threads:
        work(slice(None))
        return
    global _SORT_POOL
    if _SORT_POOL is None or _SORT_POOL._max_workers != threads:
        _SORT_POOL = ThreadPoolExecutor(threads)
    bounds = np.linspace(0, n_rows, threads + 1).astype(int)
    list(_SORT_POOL.map(work, [slice(a, b) for a, b in itertools.pairwise(bounds)]))


def _sort_descending_values(rows: np.ndarray) -> np.ndarray:
    """Each row sorted in decreasing order, as a new array: negated, sorted in place, negated back (in place),
    which avoids the slow strided copy a reversed view would need."""
    out = np.empty_like(rows)

    def block(part: slice) -> None:
        np.negative(rows[part], out=out[part])
        out[part].sort(axis=-1)
        np.negative(out[part], out=out[part])

    _in_row_blocks(block, rows.shape[0])
    return out


def _argsort_descending(rows: np.ndarray) -> np.ndarray:
    """The column order that sorts each row in decreasing order (an argsort of the negated values)."""
    order = np.empty(rows.shape, dtype=np.int64)

    def block(part: slice) -> None:
        order[part] = np.argsort(np.negative(rows[part]), axis=-1)

    _in_row_blocks(block, rows.shape[0])
    return order


def _uses_numpy(rows: torch.Tensor) -> bool:
    return rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64) and rows.numel() > 0


def sorted_descending(rows: torch.Tensor) -> torch.Tensor:
    """Each row of `[n, V]` sorted in decreasing order, differentiable.

    On the CPU the order comes from numpy's vectorised sort (x86-simd-sort: about 3-4x faster per core than
    `torch.sort` here) and the values are gathered with torch, so the gradient flows as through `torch.sort`.
    Elsewhere (CUDA) `torch.sort` is used: its radix sort is already fast.
    """
    if not _uses_numpy(rows):
        return rows.sort(dim=-1, descending=True).values
    if not rows.requires_grad:  # a constant (the teacher's rows): values only
        return torch.from_numpy(_sort_descending_values(rows.numpy()))
    return rows.gather(-1, torch.from_numpy(_argsort_descending(rows.detach().numpy())))


def _distance(s_sorted: torch.Tensor, t_sorted: torch.Tensor) -> torch.Tensor:
    shared = min(s_sorted.shape[-1], t_sorted.shape[-1])
    head = (s_sorted[:, :shared] - t_sorted[:, :shared]).abs().sum(-1)
    return head + s_sorted[:, shared:].sum(-1) + t_sorted[:, shared:].sum(-1)


def sorted_l1_rows(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """ULD distance per row: Σ_r |p_S↓(r) − p_T↓(r)| of probabilities `[n, Vs]`, `[n, Vt]` → `[n]`.

    Differentiable w.r.t. the student; the padding of the shorter side is never materialised. On the CPU with a
    constant teacher the gradient comes from value sorts alone (see the module docstring).
    """
    if _uses_numpy(student_probs) and student_probs.requires_grad and not teacher_probs.requires_grad:
        return _SortedL1.apply(student_probs, teacher_probs)
    return _distance(sorted_descending(student_probs), sorted_descending(teacher_probs))


class _SortedL1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        s_sorted = torch.from_numpy(_sort_descending_values(student_probs.detach().numpy()))
        t_sorted = torch.from_numpy(_sort_descending_values(teacher_probs.detach().numpy()))
        ctx.save_for_backward(_rank_signs(student_probs.detach(), s_sorted, t_sorted))
        return _distance(s_sorted, t_sorted)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (signs,) = ctx.saved_tensors
        return signs * grad_output.unsqueeze(-1).to(signs.dtype), None  # out of place: backward may run twice


def _rank_signs(s: torch.Tensor, s_sorted: torch.Tensor, t_sorted: torch.Tensor) -> torch.Tensor:
    """`c(rank(i))` for every student entry `[n, Vs]` (tie classes across a change get their mean of `c`)."""
    shared = min(s.shape[-1], t_sorted.shape[-1])
    c = torch.ones_like(s_sorted)
    torch.sign(s_sorted[:, :shared] - t_sorted[:, :shared], out=c[:, :shared])
    rows, before = (c[:, 1:] != c[:, :-1]).nonzero(as_tuple=True)  # c changes between ranks before, before + 1
    counts = torch.bincount(rows, minlength=s.shape[0])
    width = int(counts.max()) if rows.numel() else 0
    # piece k of a row holds ranks [b_k, b_{k+1}), b_k = before_k + 1; an entry is past change k iff it is below
    # p_S↓(b_k − 1). Change values go in ascending order into `values`, front-padded with -inf.
    slot = torch.arange(rows.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    values = torch.full((s.shape[0], width), -torch.inf, dtype=s.dtype)
    values[rows, width - 1 - slot] = s_sorted[rows, before]
    signs = c[:, :1].repeat(1, width + 1)
    signs[rows, 1 + slot] = c[rows, before + 1]
    piece = width - torch.searchsorted(values, s.contiguous(), right=True)  # = #(change values > entry)
    out = signs.gather(-1, piece)
    tied = torch.zeros(s.shape[0], dtype=torch.bool)
    tied[rows[s_sorted[rows, before] == s_sorted[rows, before + 1]]] = True  # a tie class spans a change
    for row in (tied | (counts > MAX_CROSSINGS)).nonzero().flatten().tolist():
        out[row] = _tie_mean_signs(s[row], s_sorted[row], c[row])
    return out


def _tie_mean_signs(row: torch.Tensor, row_sorted: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Exact per-entry `c` of one row, averaged over each tie class: (C(hi) − C(lo)) / (hi − lo), where
    `lo`, `hi` are the first and one-past-last ranks of the entry's value and `C` the prefix sums of `c`."""
    ascending = row_sorted.flip(0)
    lo = row.numel() - torch.searchsorted(ascending, row, right=True)
    hi = row.numel() - torch.searchsorted(ascending, row, right=False)
    prefix = torch.cat([c.new_zeros(1, dtype=torch.float64), torch.cumsum(c, 0, dtype=torch.float64)])
    return ((prefix[hi] - prefix[lo]) / (hi - lo)).to(row.dtype)
