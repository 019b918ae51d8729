"""Chunked evaluation of row-wise distillation losses, with the student's gradient computed chunk by chunk.

A distillation loss is a sum of independent *units*: one target position (same tokenizer) or one aligned span
group (cross tokenizer). Each unit reads a few rows of `student_logits [B, T, V]` and nothing else of the
student, and every student row belongs to at most one unit. So the loss and its gradient can be computed one
chunk of units at a time:

    forward:  for each chunk: rows = student_logits[positions]  ([n, V], a copy)
                              per_unit = fn(rows)                ([u])
                              J[positions] = d(sum per_unit)/d rows
    backward: grad_student[p] = J[p] * grad_output[unit(p)]

A chunk's `d(sum per_unit)/d rows` comes from autograd through `fn`, or, for a closed-form chunk
(`Chunk.closed_form`: the cross-tokenizer losses), from `fn` itself.

`J` has the shape of the student logits: it *is* the gradient that backward hands to autograd (scaled in place),
so the memory a loss adds on top of the logits and their gradient is one chunk of temporaries (`chunk_size`
rows of each vocabulary), independent of B and T. The teacher is a constant (never differentiated).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

CHUNK_BYTES = 64 * 2**20  # default budget: one float32 [rows, Vs + Vt] temporary of a chunk


@dataclass
class Chunk:
    """A slice of units: the flat student rows they read, and the function giving their losses.

    positions: `[n]` long, row indices into `student_logits.view(-1, V)`.
    units: `[u]` long, which units this chunk computes.
    row_unit: `[n]` long, the unit each row belongs to (for scaling the gradient in backward).
    fn: maps the gathered rows `[n, V]` to the losses of `units`, `[u]` (differentiated by autograd); or, with
        `closed_form`, `fn(rows, needs_grad)` returns `(losses [u], d(Σ losses)/d rows [n, V] or None)` itself.
    """

    positions: torch.Tensor
    units: torch.Tensor
    row_unit: torch.Tensor
    fn: Callable
    closed_form: bool = False


class _ChunkedRowLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, num_units: int, chunks: Callable[[], Iterator[Chunk]]):
        logits = student_logits.detach()
        device, n_rows = logits.device, logits.shape[:-1].numel()
        needs_grad = ctx.needs_input_grad[0]
        out = torch.zeros(num_units, dtype=_compute_dtype(student_logits), device=device)
        # rows no chunk writes are zeroed below
        grad = logits.new_empty(n_rows, logits.shape[-1]) if needs_grad else None
        row_unit = torch.full((n_rows,), -1, dtype=torch.long, device=device) if needs_grad else None
        for chunk in chunks():
            rows = rows_at(logits, chunk.positions)
            if chunk.closed_form:
                per_unit, row_grad = chunk.fn(rows, needs_grad)
            elif needs_grad:
                rows.requires_grad_(True)
                with torch.enable_grad():
                    per_unit = chunk.fn(rows)
                    (row_grad,) = torch.autograd.grad(per_unit.sum(), rows)
            else:
                with torch.no_grad():
                    per_unit = chunk.fn(rows)
            if needs_grad:
                grad.index_copy_(0, chunk.positions, row_grad.to(grad.dtype))
                row_unit.index_copy_(0, chunk.positions, chunk.row_unit)
            out.index_copy_(0, chunk.units, per_unit.detach().to(out.dtype))
        if needs_grad:
            grad.index_fill_(0, (row_unit < 0).nonzero().squeeze(-1), 0)  # only the rows no unit reads
            # kept as plain attributes (not save_for_backward) so backward can drop its reference and hand the
            # buffer itself to autograd as the gradient, instead of autograd copying it
            ctx.grad, ctx.row_unit, ctx.logits_shape = grad, row_unit, student_logits.shape
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if getattr(ctx, "consumed", False):
            raise RuntimeError("chunked distillation loss: backward ran twice; its gradient buffer is scaled in place")
        ctx.consumed = True
        grad, row_unit = ctx.grad, ctx.row_unit
        del ctx.grad, ctx.row_unit
        scale = torch.cat([grad_output.to(grad.dtype), grad_output.new_zeros(1, dtype=grad.dtype)])
        grad.mul_(scale[row_unit].unsqueeze(-1))  # row_unit == -1 picks the appended zero
        return grad.view(ctx.logits_shape), None, None


def rows_at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows `positions` (flat indices over the leading dims) of `x [B, T, ...]`, as `[n, ...]`, gathered without
    copying all of `x` first when it is not contiguous (e.g. `logits[:, :-1]`)."""
    if x.dim() >= 3 and x.stride(0) != x.shape[1] * x.stride(1):  # [B, T] would not flatten as a view
        return x[positions // x.shape[1], positions % x.shape[1]]
    return x.reshape(-1, *x.shape[2:]).index_select(0, positions)


def chunked_row_loss(student_logits: torch.Tensor, num_units: int, chunks: Callable[[], Iterator[Chunk]]):
    """Losses of `num_units` units, `[num_units]`, differentiable w.r.t. `student_logits` (see module doc)."""
    return _ChunkedRowLoss.apply(student_logits, num_units, chunks)


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Losses are computed in float32 at least (bf16/fp16 logits are upcast one chunk at a time)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`log_softmax(logits / temperature)` in the compute dtype: `[n, V] -> [n, V]`."""
    logits = logits.to(_compute_dtype(logits))
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


def resolve_chunk_size(chunk_size: int | None, *vocab_sizes: int) -> int:
    """Rows per chunk: as given, or (None) as many as keep one float32 `[rows, ΣV]` temporary within 64 MiB
    (clamped to 16..4096): about 200 rows for a 32k + 50k pair, 100 for two 150k vocabularies."""
    if chunk_size is None:
        return int(min(4096, max(16, CHUNK_BYTES // (4 * max(sum(vocab_sizes), 1)))))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return chunk_size


def chunk_slices(total: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, total, chunk_size):
        yield slice(start, min(start + chunk_size, total))
