"""Span-group rows merged straight from the logits, split into column parts, with their gradient in closed form.

A group covers rows k = 1..m of logits `z_k` (tempered: `y_k = z_k / τ`), realised tokens `x_k`, and a base row
`b` (the last for "bayesian", the first for "observed"; `distill.align.merge`). The merged log-probabilities are
`log_softmax(y_b) + π`, with `π = Σ_{k≠b} log_softmax(y_k)(x_k)` the log-mass of the realised other tokens:

    ℓ(c) = y_b(c) − lse(y_b) + π,        e^ℓ = softmax(y_b) · e^π        (total mass e^π)

So one softmax pass over the chunk's rows gives every merged probability, and the log-probabilities are only
formed for the columns that need them. The columns are taken in `parts` (index tensors or slices that together
cover the vocabulary once, e.g. GOLD's matched and unmatched tokens), each part a contiguous `[u, C_i]` tensor. A
slice is a plain copy of each row's segment; an index tensor is a gather, several times slower in random order.

**Gradient.** Given `G_i = ∂J/∂ℓ` on each part and `g_π`, the part of `∂J/∂π` not through `ℓ` (e.g. through the
deficit `1 − e^π`), the total `∂J/∂π = ΣG + g_π`, `∂J/∂lse(y_b) = −ΣG` and `∂lse/∂y = softmax(y)`:

    ∂J/∂z_b = (G − ΣG · softmax(y_b)) / τ,        softmax(y_b) = e^{ℓ − π} on the parts already computed
    ∂J/∂z_k = (ΣG + g_π) · (onehot(x_k) − softmax(y_k)) / τ      for k ≠ b

`distill.align.merge_span_log_probs` of `log_softmax(y)` is the same merge through autograd (the tests'
reference).
"""

from __future__ import annotations

import torch

from distill.align.merge import MergeStrategy, base_rows

Columns = torch.Tensor | slice | None  # a part's columns: an index tensor, a slice, or None (all, in order)


class MergedRows:
    """The merged rows of a chunk of groups: `probs[i]` (`[u, C_i]` per column part), `log_probs(i)` (built on
    demand) and `log_mass` (`π`, `[u]`), plus what `logits_grad` needs.

    One softmax pass over the rows gives everything: a base row's probabilities are `softmax(y_b) · e^π` on the
    part's columns, `lse(y) = max(y) − log(max softmax(y))`, and the log-probabilities `y_b − lse + π` are only
    formed for the parts that ask for them (GOLD's matched columns; ULD needs probabilities only).
    """

    def __init__(self, logits: torch.Tensor, realised_ids: torch.Tensor, group_of_row: torch.Tensor,
                 strategy: MergeStrategy, parts: tuple[Columns, ...], temperature: float = 1.0) -> None:
        """`logits [n, V]` (a chunk's rows, any float dtype; upcast to float32 at least), `realised_ids [n]`,
        `group_of_row [n]` (0..u-1, non-decreasing), `parts`: column index tensors or slices covering `0..V-1`
        once, or `(None,)` for all columns in order."""
        y = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
        if temperature != 1.0:
            y = y / temperature
        self.temperature, self.parts = temperature, parts
        self._y, self._realised, self._group = y, realised_ids, group_of_row
        self._softmax = torch.softmax(y, dim=-1)
        # softmax's largest entry is exactly 1/Σexp(y − max y): never underflows, one read pass
        self._lse = y.amax(-1).sub_(self._softmax.amax(-1).log_())
        is_base = base_rows(group_of_row, strategy)
        self._base = None if bool(is_base.all()) else is_base.nonzero().squeeze(-1)
        num_groups = y.shape[0] if self._base is None else self._base.numel()
        self.log_mass = y.new_zeros(num_groups)
        if self._base is not None:
            self._others = (~is_base).nonzero().squeeze(-1)
            own = y[self._others, realised_ids[self._others]] - self._lse[self._others]
            self.log_mass.index_add_(0, group_of_row[self._others], own)
        mass = None if self._base is None else self.log_mass.exp().unsqueeze(-1)
        self.probs = tuple(self._base_columns(self._softmax, cols, own=mass is not None) for cols in parts)
        if mass is not None:
            for probs in self.probs:
                probs.mul_(mass)

    def _at_base(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self._base is None else rows.index_select(0, self._base)

    def _base_columns(self, rows: torch.Tensor, cols: Columns, own: bool = False) -> torch.Tensor:
        """`rows[base][:, cols]`, contiguous; a new tensor when `own` (the caller writes to it), else possibly
        `rows` itself. A slice is cut before the base rows are taken, so only its columns are copied."""
        if isinstance(cols, slice):
            segment = rows[:, cols]
            return segment.clone(memory_format=torch.contiguous_format) if self._base is None else \
                segment.index_select(0, self._base)
        part = self._at_base(rows)
        if cols is not None:
            return part.index_select(-1, cols)
        return part.clone() if own and part is rows else part

    def log_probs(self, part: int, exact: bool = True) -> torch.Tensor:
        """`[u, C_part]`: the merged log-probabilities on a part's columns, floored at the most negative finite
        value (a banned token's −inf would make 0·(−inf) = NaN in the divergences; the floor gives the same
        probability 0 and finite products). `exact`: `y_b − lse + π` from the logits (a column gather); else
        `log(probs[part])`, cheaper, equal up to rounding where the probability is a normal float, and the floor
        where it underflowed to 0 (fine for a side that is never differentiated: a zero probability weighs 0)."""
        if not exact:
            return floored_log(self.probs[part])
        offset = (self.log_mass - self._at_base(self._lse)).unsqueeze(-1)
        logp = self._base_columns(self._y, self.parts[part], own=True).add_(offset)
        return logp.clamp_(min=torch.finfo(logp.dtype).min)

    def logits_grad(self, grad_log_probs: tuple[torch.Tensor, ...], grad_log_mass: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """`∂J/∂logits [n, V]` (float32/64) from `∂J/∂log p` per part and `∂J/∂π` beyond the parts (see the
        module doc). The part gradients are overwritten (used as scratch)."""
        total = sum(g.sum(-1) for g in grad_log_probs)  # ΣG per group
        softmax_scale = _softmax_scale(total, self.log_mass).unsqueeze(-1)
        grad_base = None
        for cols, g, p in zip(self.parts, grad_log_probs, self.probs, strict=True):
            g.addcmul_(p, softmax_scale)  # G − ΣG · softmax(y_b)
            if cols is None:
                grad_base = g
                continue
            if grad_base is None:
                grad_base = self._y.new_empty(self.log_mass.numel(), self._y.shape[-1])
            if isinstance(cols, slice):
                grad_base[:, cols] = g
            else:  # a scatter with the index broadcast over rows: twice as fast as index_copy_ on the last dim
                grad_base.scatter_(-1, cols.expand_as(g), g)
        if self._base is None:
            grad = grad_base
        else:
            grad = self._y.new_empty(self._y.shape)
            grad.index_copy_(0, self._base, grad_base)
            others, weight = self._others, total + (0 if grad_log_mass is None else grad_log_mass)
            weight = weight[self._group[others]].unsqueeze(-1)
            other_grad = self._softmax.index_select(0, others).mul_(-weight)  # (onehot(x_k) − softmax(y_k))·w
            other_grad.scatter_add_(-1, self._realised[others].unsqueeze(-1), weight)
            grad.index_copy_(0, others, other_grad)
        return grad if self.temperature == 1.0 else grad.div_(self.temperature)


def floored_log(x: torch.Tensor) -> torch.Tensor:
    """`log x`, with log 0 = −inf floored at the most negative finite value (0 · floor = 0, never NaN)."""
    return x.log().clamp_(min=torch.finfo(x.dtype).min)


def _softmax_scale(total: torch.Tensor, log_mass: torch.Tensor) -> torch.Tensor:
    """−ΣG · e^{−π}, the factor turning a merged row's probabilities e^ℓ into −ΣG · softmax(y_b). Computed in
    float64 and kept finite: e^{−π} overflows float32 once π < −88, where e^ℓ ≤ e^π has underflowed to 0."""
    big = torch.finfo(total.dtype).max
    scale = torch.exp(log_mass.double().neg().clamp_(max=700.0)).mul_(total.double()).neg_()
    return scale.clamp_(-big, big).to(total.dtype)
