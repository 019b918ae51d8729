"""The ULD distance between sorted probability vectors, computed exactly from value bins instead of a sort.

`sorted_l1_rows(p_S, p_T) = Σ_r |p_S↓(r) − p_T↓(r)|`, rows sorted in decreasing order, the shorter one
zero-padded. It equals |V|·W₁ between the empirical distributions of the probability *values* (the closed-form
Wasserstein-1 of ULD), so it is invariant to any permutation of either vocabulary and works for any two
vocabulary sizes.

**Layer-cake form.** With `N(x) = #{i : p(i) > x}` the number of entries above a level `x`,

    Σ_r |p_S↓(r) − p_T↓(r)| = ∫₀^∞ |N_S(x) − N_T(x)| dx,

because `|a − b| = ∫ |1[a > x] − 1[b > x]| dx` and, for sorted rows, `Σ_r 1[p↓(r) > x] = N(x)`.

**Bins.** Non-negative floats sharing their high 16 bits (exponent and the top mantissa bits: 128 bins per
octave in float32, 16 in float64) form consecutive value intervals `[lo_k, hi_k)`. Each row's bins start at its
own lowest key, and rows are processed in blocks of similar key range, so a table is about as wide as its rows'
value range (a merged span group reaching 1e-28 does not widen everyone's). A block whose rows span so many
octaves that the tables would outgrow the rows drops key bits; one whose rows crowd into few bins adds one.
One pass gives, per row and bin, the counts `c_S, c_T`, the counts above the bin `A_S, A_T`, and the offsets
`Σ (p − lo_k)`. On a bin,
`D = N_S − N_T` stays within `[A_S − A_T − c_T, A_S + c_S − A_T]`. When that range does not straddle 0 the bin
is *clean*: its integral is `|(A_S − A_T)(hi_k − lo_k) + Σ_S (p − lo_k) − Σ_T (p − lo_k)|`. Only the entries of
*mixed* bins (near the few levels where the sorted curves cross: about 1-2% of entries on random logits) are
sorted, and their bins integrated piece by piece. Below the lowest bin only the padding differs:
`|Vs − Vt|·lo_min`. Two nearly equal, nearly flat distributions cross everywhere; a block of rows whose mixed
bins hold more than `MAX_MIXED_SHARE` of the entries is sorted whole instead (same value and gradient).

**Routes.** `native.py` runs the same bins per row in a compiled kernel (`uld_bins.cpp`: each row's passes fused
into loops over its entries, its tables in cache; 2.3× faster on the vs_trl bench's rows). The whole-tensor torch
passes below are its reference in the tests and its fallback where it cannot be built.

**Gradient.** The (sub)gradient w.r.t. a student probability is the sign of the sorted difference at its rank,
`c(r) = sign(p_S↓(r) − p_T↓(r))`, with `c(r) = 1` past the teacher's length (the student's padded tail is summed);
entries tied in value share the mean of `c` over their ranks (the same sum as any order autograd through a sort
would pick, split evenly). For an entry of value `v` with ranks `(a, e]` (`a = #{p_S > v}`, `e = #{p_S ≥ v}`):
`c(r) = −1` for `r ≤ #{p_T > v}`, `+1` for `r > #{p_T ≥ v}` and 0 between, so the gradient is a count of ranks.
In a clean bin it is the bin's sign, ±1.
"""

from __future__ import annotations

import sys

import torch

from distill.losses import native

#: Bin-table cells (rows × bins) per block of rows: bounds the tables' memory (float32 counts, float64 sums).
TABLE_CELLS = 1 << 20
#: Bins per row are capped near one per `ENTRIES_PER_BIN` entries (at least `MIN_BINS`): rows spanning many
#: octaves (merged span groups reach 1e-28) get coarser bins instead of tables wider than the rows. (A cap of one
#: bin per 4 entries was faster on one captured chunk but slower in the vs_trl trainer bench: bench/RESULTS.md.)
ENTRIES_PER_BIN, MIN_BINS = 1, 512
#: A block whose mixed bins hold more than this share of its entries is done with a row sort instead (nearly
#: equal distributions cross everywhere; sorting most entries by (row, value) costs more than `torch.sort`).
MAX_MIXED_SHARE = 0.25
#: Rows of similar key range share a block of tables; a smaller group joins the next wider one (`_row_blocks`).
MIN_GROUP_ROWS = 64
#: Rows whose values sit in few bins get finer ones (up to `MAX_FINER_BITS` more key bits, while a row keeps at
#: most one bin per `ENTRIES_PER_FINE_BIN` entries): entries of a bin where the sorted curves cross are sorted,
#: and nearly flat rows put thousands of entries in such a bin. One bit was 29% faster on the vs_trl bench's
#: rows, two bits 19% (wider tables): bench/RESULTS.md.
MAX_FINER_BITS, ENTRIES_PER_FINE_BIN = 1, 16


def sorted_descending(rows: torch.Tensor) -> torch.Tensor:
    """Each row of `[n, V]` sorted in decreasing order, differentiable (`torch.sort`)."""
    return rows.sort(dim=-1, descending=True).values


def sorted_l1_rows(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """ULD distance per row: Σ_r |p_S↓(r) − p_T↓(r)| of probabilities `[n, Vs]`, `[n, Vt]` → `[n]`.

    Differentiable w.r.t. the student; the padding of the shorter side is never materialised. On the CPU with a
    constant teacher it is computed from value bins (see the module docstring): no sort of the full rows.
    """
    if _binnable(student_probs, teacher_probs):
        return _BinnedSortedL1.apply(student_probs, teacher_probs)
    return _by_sorting(student_probs, teacher_probs)


def _by_sorting(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """The definition, through `torch.sort` (differentiable, any device)."""
    s_sorted, t_sorted = sorted_descending(student_probs), sorted_descending(teacher_probs)
    shared = min(s_sorted.shape[-1], t_sorted.shape[-1])
    head = (s_sorted[:, :shared] - t_sorted[:, :shared]).abs().sum(-1)
    return head + s_sorted[:, shared:].sum(-1) + t_sorted[:, shared:].sum(-1)


def _binnable(student: torch.Tensor, teacher: torch.Tensor) -> bool:
    """CPU, one float dtype, a constant teacher, non-empty rows."""
    if not (student.device.type == teacher.device.type == "cpu" and sys.byteorder == "little"):
        return False
    if student.dtype != teacher.dtype or student.dtype not in (torch.float32, torch.float64):
        return False
    return not teacher.requires_grad and student.shape[-1] > 0 and teacher.shape[-1] > 0 and student.shape[0] > 0


def _bin_keys(x: torch.Tensor) -> torch.Tensor:
    """The high 16 bits of each float (a strided view, no copy): a key that orders non-negative values."""
    words = x.element_size() // 2
    return x.view(torch.int16)[..., words - 1 :: words]


def _key_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's lowest and highest bin key `[n]`: the keys of its least and greatest values (non-negative floats
    order as their bits; a NaN's key is above inf's). `amin`/`amax` of the values are vectorised, `aminmax` of
    the strided keys was 5-20× slower (bench/RESULTS.md)."""
    return _bin_keys(x.amin(-1)), _bin_keys(x.amax(-1))


def _coarsening(width: int, entries: int) -> int:
    """Bits dropped from the 16-bit keys (0-7: bins stay within one binade) so a row has at most
    max(MIN_BINS, entries / ENTRIES_PER_BIN) bins; or, negative, bits added below them (at most
    `MAX_FINER_BITS`) while a row keeps at most entries / ENTRIES_PER_FINE_BIN bins."""
    bits = 0
    while bits < 7 and (width >> bits) > max(MIN_BINS, entries // ENTRIES_PER_BIN):
        bits += 1
    while bits <= 0 and -bits < MAX_FINER_BITS and (width << (1 - bits)) <= entries // ENTRIES_PER_FINE_BIN:
        bits -= 1
    return bits


def _rescale(keys, coarsen: int, top: bool = False):
    """16-bit keys (a tensor or an int) as keys of the bins with `coarsen` bits dropped (negative: added);
    `top`: the last fine key inside each coarse one rather than the first."""
    if coarsen >= 0:
        return keys >> coarsen
    return ((keys + 1) << -coarsen) - 1 if top else keys << -coarsen


def _low_bits(dtype: torch.dtype, coarsen: int) -> int:
    """Bits of a float below its bin key."""
    return (16 if dtype == torch.float32 else 48) + coarsen


def _edges(keys: torch.Tensor, dtype: torch.dtype, coarsen: int) -> torch.Tensor:
    """The value of the float whose top bits are the bin key and the rest zero (a bin's lower edge), float64."""
    if dtype == torch.float32:
        return (keys.to(torch.int32) << _low_bits(dtype, coarsen)).view(torch.float32).double()
    return (keys.to(torch.int64) << _low_bits(dtype, coarsen)).view(torch.float64)


def _offsets_in_steps(dtype: torch.dtype, coarsen: int) -> bool:
    """Offsets are counted in steps of 2^-low_bits of the bin width (float32 bins of 16 key bits or finer)
    rather than summed as values."""
    return dtype == torch.float32 and coarsen <= 0


def _above_edge(x: torch.Tensor, coarsen: int) -> torch.Tensor:
    """Each entry's height above its bin's lower edge. Float32 bins of 16 key bits or finer: its low bits, a count
    of steps of (hi_k − lo_k) / 2^low_bits, as floats. Otherwise `p − lo` itself, exact (Sterbenz: one binade)."""
    if _offsets_in_steps(x.dtype, coarsen):
        if coarsen == 0:
            return x.view(torch.uint16)[..., 0::2].to(torch.float32)
        return (x.view(torch.int32) & ((1 << _low_bits(x.dtype, coarsen)) - 1)).to(torch.float32)
    bits = torch.int32 if x.dtype == torch.float32 else torch.int64
    return x - (x.view(bits) & -(1 << _low_bits(x.dtype, coarsen))).view(x.dtype)


def sorted_l1_and_grad(student_probs: torch.Tensor, teacher_probs: torch.Tensor, want_grad: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`sorted_l1_rows` `[n]` and, if `want_grad`, its gradient w.r.t. the student probabilities `[n, Vs]`
    (the teacher is a constant). From value bins where `sorted_l1_rows` uses them, else through a sort."""
    if _binnable(student_probs, teacher_probs.detach()):
        return _binned(student_probs.detach(), teacher_probs.detach(), want_grad)
    if not want_grad:
        with torch.no_grad():
            return _by_sorting(student_probs, teacher_probs.detach()), None
    with torch.enable_grad():
        student = student_probs.detach().requires_grad_(True)
        value = _by_sorting(student, teacher_probs.detach())
        (grad,) = torch.autograd.grad(value.sum(), student)
    return value.detach(), grad


def _binned(s: torch.Tensor, t: torch.Tensor, want_signs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The binned distance `[n]` and, if `want_signs`, its gradient w.r.t. the student entries `[n, Vs]`: from the
    compiled kernel (`native.py`, the same bins fused per row) where it is available, else as below."""
    compiled = native.sorted_l1(s, t, want_signs)
    if compiled is not None:
        return compiled
    return _binned_by_torch(s, t, want_signs)


def _binned_by_torch(s: torch.Tensor, t: torch.Tensor, want_signs: bool
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_binned` with whole-tensor torch passes (the reference of the compiled kernel, and its fallback)."""
    s, t = s.contiguous(), t.contiguous()
    (s_lo, s_hi), (t_lo, t_hi) = (_key_range(x) for x in (s, t))
    if min(int(s_lo.min()), int(t_lo.min())) < 0:  # the sign bit
        raise native.negative_values("student" if int(s_lo.min()) < 0 else "teacher")
    row_lo, row_hi = torch.minimum(s_lo, t_lo).int(), torch.maximum(s_hi, t_hi).int()
    value = torch.empty(s.shape[0], dtype=torch.float64)
    signs = torch.empty_like(s) if want_signs else None
    for rows, coarsen in _row_blocks(row_hi - row_lo + 1, s.shape[1] + t.shape[1]):
        key_lo = _rescale(row_lo[rows], coarsen)
        width = int((_rescale(row_hi[rows], coarsen, top=True) - key_lo).max()) + 1
        edges = _edges(key_lo.unsqueeze(1) + torch.arange(width + 1, dtype=torch.int32), s.dtype, coarsen)
        edges.nan_to_num_(nan=torch.finfo(s.dtype).max, posinf=torch.finfo(s.dtype).max)  # inf/NaN: empty bins
        if rows.numel() == s.shape[0]:  # one block: no row gather
            value[:] = _binned_rows(s, t, (key_lo, coarsen), edges, signs)
            continue
        block_signs = None if signs is None else s.new_empty(rows.numel(), s.shape[1])
        value[rows] = _binned_rows(s.index_select(0, rows), t.index_select(0, rows), (key_lo, coarsen), edges,
                                   block_signs)
        if signs is not None:
            signs.index_copy_(0, rows, block_signs)
    inf_key = int(_bin_keys(torch.tensor([torch.inf], dtype=s.dtype))[0])
    if int(row_hi.max()) >= inf_key:  # rows with inf or NaN entries get NaN
        bad = row_hi >= inf_key
        value[bad] = torch.nan
        if signs is not None:
            signs[bad] = torch.nan
    return value.to(s.dtype), signs


def _row_blocks(widths: torch.Tensor, entries: int):
    """Blocks of rows with their bits dropped: `(row indices [b], coarsen)`. Each row's bins start at its own
    lowest key, so a table is as wide as its block's widest key range. Rows are grouped by the bit length of
    that range, so one merged row spanning 70 octaves does not widen the tables of hundreds spanning 4; a group
    of fewer than `MIN_GROUP_ROWS` joins the next wider one (each block costs a few dozen small ops). A block
    holds at most `TABLE_CELLS` cells."""
    length = torch.floor(torch.log2(widths.double())).int()
    pending = widths.new_empty(0, dtype=torch.long)
    lengths = torch.unique(length).tolist()
    for i, bits in enumerate(lengths):
        rows = torch.cat([pending, (length == bits).nonzero().squeeze(1)])
        if rows.numel() < MIN_GROUP_ROWS and i + 1 < len(lengths):
            pending = rows
            continue
        pending = pending[:0]
        rows = rows.sort().values
        width = int(widths[rows].max())
        coarsen = _coarsening(width, entries)
        block = max(1, TABLE_CELLS // (_rescale(width, coarsen, top=True) + 2))
        for start in range(0, rows.numel(), block):
            yield rows[start : start + block], coarsen


class _BinnedSortedL1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        value, signs = _binned(student_probs.detach(), teacher_probs.detach(), ctx.needs_input_grad[0])
        ctx.save_for_backward(signs)
        return value

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (signs,) = ctx.saved_tensors
        return signs * grad_output.unsqueeze(-1).to(signs.dtype), None  # out of place: backward may run twice


def _binned_rows(
    s: torch.Tensor, t: torch.Tensor, keys: tuple[torch.Tensor, int], edges: torch.Tensor,
    signs_out: torch.Tensor | None,
) -> torch.Tensor:
    """The distance of each row `[n]` (float64); writes the gradient signs `[n, Vs]` into `signs_out` if given.
    `keys`: each row's lowest bin key `[n]` and the bits dropped from the 16-bit keys; `edges`: each row's bin
    edges `[n, width + 1]`.

    Counts are float32 (exact: every partial sum is an integer below 2²⁴). Every entry lies in some bin, so the
    counts above bin k are `A = V − B`, with `B = cumsum(c)_k` the entries in bins ≤ k, and `D` just below the
    bin's top is `d_top = A_S − A_T = (Vs − Vt) − (B_S − B_T)`; the bin is clean iff `d_top ≥ c_T` (D ≥ 0 on it)
    or `d_top ≤ −c_S` (D ≤ 0).
    """
    (key_lo, coarsen), n, width = keys, s.shape[0], edges.shape[1] - 1
    indices, counts, below = [], [], []
    for x in (s, t):
        index = _bin_index(x, key_lo, coarsen)
        count = torch.zeros(n, width).scatter_add_(1, index, torch.ones(1).expand(index.shape))
        indices.append(index)
        counts.append(count)
        below.append(count.cumsum(-1))
    (s_index, t_index), (s_count, t_count), (s_below, t_below) = indices, counts, below
    d_top = torch.sub(t_below, s_below).add_(s.shape[1] - t.shape[1])
    positive = d_top >= t_count  # D ≥ 0 on the whole bin
    negative = d_top <= s_count.neg_()  # D ≤ 0 on the whole bin (s_count is not needed after this)
    clean = positive | negative
    value = _clean_integral(d_top, clean, s, t, s_index, t_index, edges, coarsen)  # ∫ |D| over the clean bins
    value += abs(s.shape[1] - t.shape[1]) * edges[:, 0]  # [0, lowest edge): only the padding differs
    mixed = clean.logical_not_()
    if not bool(mixed.any()):
        if signs_out is not None:
            torch.gather(positive.to(s.dtype).sub_(negative.to(s.dtype)), 1, s_index, out=signs_out)
        return value
    s_at = mixed.gather(1, s_index).view(-1).nonzero().squeeze(1)
    t_at = mixed.gather(1, t_index).view(-1).nonzero().squeeze(1)
    if s_at.numel() + t_at.numel() > MAX_MIXED_SHARE * (s.numel() + t.numel()):
        return _sorted_block(s, t, signs_out)
    if signs_out is not None:
        torch.gather(positive.to(s.dtype).sub_(negative.to(s.dtype)), 1, s_index, out=signs_out)  # 0: mixed bin
    mixed_part, student_signs = _mixed_bins(
        s, t, s_at, t_at, s_index, t_index, (d_top, s_below, t_below, edges), signs_out is not None
    )
    value += mixed_part
    if signs_out is not None:
        signs_out.view(-1)[s_at] = student_signs
    return value


def _bin_index(x: torch.Tensor, key_lo: torch.Tensor, coarsen: int) -> torch.Tensor:
    """Each entry's bin, 0-based from its row's lowest bin key `key_lo [n]`, as the int64 index `scatter_add_`
    takes. With 16 key bits or fewer the subtraction is done on the int16 keys (keys of non-negative floats,
    ≥ 0); finer keys are the float's bits shifted."""
    if coarsen < 0:
        bits = torch.int32 if x.dtype == torch.float32 else torch.int64
        keys = x.view(bits) >> _low_bits(x.dtype, coarsen)
        return keys.sub_(key_lo.to(bits).unsqueeze(1)).long()
    index = torch.sub(_bin_keys(x), (key_lo << coarsen).to(torch.int16).unsqueeze(1)).long()
    return index.bitwise_right_shift_(coarsen) if coarsen else index


def _clean_integral(d_top, clean, s, t, s_index, t_index, edges, coarsen) -> torch.Tensor:
    """Σ over the clean bins of |∫ D dx| = |(hi − lo)·d_top + Σ_S (p − lo) − Σ_T (p − lo)|, per row, float64."""
    bin_width = edges.diff(dim=-1)
    offsets = torch.zeros(bin_width.shape, dtype=torch.float32 if _offsets_in_steps(s.dtype, coarsen) else s.dtype)
    offsets.scatter_add_(1, s_index, _above_edge(s, coarsen))
    offsets.scatter_add_(1, t_index, _above_edge(t, coarsen).neg_())
    if _offsets_in_steps(s.dtype, coarsen):  # in steps of (hi − lo)/2^b: ∫ D = (hi − lo)·(d_top + o/2^b)
        per_width = offsets.double().mul_(2.0 ** -_low_bits(s.dtype, coarsen)).add_(d_top)
        return per_width.abs_().mul_(clean).mul_(bin_width).sum(-1)
    return d_top.double().mul_(bin_width).add_(offsets).abs_().mul_(clean).sum(-1)


def _sorted_block(s: torch.Tensor, t: torch.Tensor, signs_out: torch.Tensor | None) -> torch.Tensor:
    """`_binned_rows` done by sorting whole rows: the value (float64) and, into `signs_out`, `c` at each entry's
    rank, averaged over each run of tied values as in the binned route."""
    s_sorted, s_order = s.sort(dim=-1, descending=True)
    t_sorted = sorted_descending(t)
    shared = min(s.shape[-1], t.shape[-1])
    difference = s_sorted[:, :shared] - t_sorted[:, :shared]
    value = sum(x.sum(-1, dtype=torch.float64) for x in (difference.abs(), s_sorted[:, shared:], t_sorted[:, shared:]))
    if signs_out is not None:
        c = torch.ones_like(s_sorted)
        torch.sign(difference, out=c[:, :shared])
        run_start = torch.ones_like(s_sorted, dtype=torch.bool)
        run_start[:, 1:] = s_sorted[:, 1:] != s_sorted[:, :-1]
        run = run_start.view(-1).cumsum(0) - 1
        mean = torch.zeros(int(run[-1]) + 1, dtype=c.dtype).index_add_(0, run, c.view(-1)) / torch.bincount(run)
        signs_out.scatter_(1, s_order, mean[run].view_as(c))
    return value


def _order_codes(values: torch.Tensor) -> torch.Tensor:
    """Integers `< 2³¹` in the order of the non-negative `values`, equal where they are equal: the float32 bits
    themselves, or (float64) each value's rank among the distinct values."""
    if values.dtype == torch.float32:
        return values.view(torch.int32).long()
    return torch.unique(values, return_inverse=True)[1]


def _mixed_bins(s, t, s_at, t_at, s_index, t_index, tables, want_signs: bool):
    """Exact integral over the mixed bins of each row `[n]`, and the gradient of the student entries `s_at`.

    The entries of mixed bins, both sides, are sorted by (row, value). Within a bin (a segment of that order),
    D on the gap above an entry is D at the bin's top plus the student entries after it minus the teacher
    entries after it; below the bin's lowest entry it is D at the top plus all of the bin's entries.
    """
    d_top_table, s_below, t_below, edges = tables
    width = edges.shape[1] - 1
    values = torch.cat([s.view(-1)[s_at], t.view(-1)[t_at]])
    rows = torch.cat([s_at // s.shape[1], t_at // t.shape[1]])
    order = torch.sort((rows << 31) | _order_codes(values)).indices  # by (row, value): one int64 sort
    seg = (rows * width + torch.cat([s_index.view(-1)[s_at], t_index.view(-1)[t_at]]))[order]  # (row, bin)
    values, rows, is_s = values[order].double(), rows[order], order < s_at.numel()
    lo_at = seg + rows  # the flat index of each entry's bin's lower edge in `edges [n, width + 1]`
    seg_start = torch.ones_like(is_s)
    seg_start[1:] = seg[1:] != seg[:-1]
    seg_last = torch.roll(seg_start, -1)
    seg_last[-1] = True
    s_cum, t_cum = is_s.cumsum(0), (~is_s).cumsum(0)  # int64 running counts
    seg_end = seg_last.nonzero().squeeze(1)[seg_start.cumsum(0) - 1]  # each entry's segment's last position
    s_after, t_after = s_cum[seg_end] - s_cum, t_cum[seg_end] - t_cum  # that side's entries after each, same bin
    d_top = d_top_table.view(-1)[seg].double()
    d_below = d_top + (s_after - t_after)  # D on the gap above each entry
    gap_top = torch.where(seg_last, edges.view(-1)[lo_at + 1], torch.roll(values, -1))
    per_entry = d_below.abs() * (gap_top - values)
    d_bottom = d_below + torch.where(is_s, 1.0, -1.0)  # at a bin's first entry: all of its entries
    per_entry += torch.where(seg_start, d_bottom.abs() * (values - edges.view(-1)[lo_at]), 0.0)
    integral = torch.zeros(s.shape[0], dtype=torch.float64).index_add_(0, rows, per_entry)
    if not want_signs:
        return integral, None
    mine = is_s.nonzero().squeeze(1)
    signs = torch.empty(s_at.numel(), dtype=s.dtype)
    # an untied entry has rank e = #S above + 1, and c(e) = +1 iff fewer than e teacher entries lie above it,
    # i.e. iff D ≥ 0 just above it
    signs[order[mine]] = torch.where(d_below[mine] >= 0, 1.0, -1.0).to(s.dtype)
    same = (values[1:] == values[:-1]) & ~seg_start[1:]  # runs of equal values within a (row, bin) segment
    if not bool(same.any()):
        return integral, signs
    # student entries tied with another entry (either side) share the mean of c over their class's ranks
    tied = torch.zeros_like(is_s)
    tied[1:] |= same
    tied[:-1] |= same
    mine = (tied & is_s).nonzero().squeeze(1)
    starts = torch.cat([same.new_zeros(1, dtype=torch.long), same.logical_not().nonzero().squeeze(1) + 1,
                        same.new_full((1,), values.numel(), dtype=torch.long)])  # where each run of equal values starts
    run = torch.searchsorted(starts, mine, right=True) - 1
    first, last = starts[run], starts[run + 1] - 1
    a = (s.shape[1] - s_below.view(-1)[seg[mine]]).double() + s_after[last]  # student entries above the value
    e = a + (s_cum[last] - s_cum[first] + is_s[first])  # ... at or above it: the tie class holds ranks (a, e]
    t_gt = (t.shape[1] - t_below.view(-1)[seg[mine]]).double() + t_after[last]  # teacher entries above it
    t_ge = t_gt + (t_cum[last] - t_cum[first] + (~is_s[first]))
    plus = (e - torch.maximum(a, t_ge)).clamp(min=0)  # its ranks r where p_T↓(r) < v
    minus = (torch.minimum(e, t_gt) - a).clamp(min=0)  # ... where p_T↓(r) > v
    signs[order[mine]] = ((plus - minus) / (e - a)).to(s.dtype)
    return integral, signs
