"""Chunked evaluation of row-wise distillation losses, with the student's gradient computed chunk by chunk.

A distillation loss is a sum of independent *units*: one target position (same tokenizer) or one aligned span
group (cross tokenizer). Each unit reads a few rows of `student_logits [B, T, V]` and nothing else of the
student, and every student row belongs to at most one unit. So the loss and its gradient can be computed one
chunk of units at a time:

    forward:  for each chunk: rows = student_logits[positions]  ([n, V], a copy)
                              per_unit = fn(rows)                ([u])
                              J[positions] = d(sum per_unit)/d rows
    backward: grad_student[p] = J[p] * grad_output[unit(p)]

`J` has the shape of the student logits: it *is* the gradient that backward hands to autograd (scaled in place),
so the memory a loss adds on top of the logits and their gradient is one chunk of temporaries (`chunk_size`
rows of each vocabulary), independent of B and T. The teacher is a constant (never differentiated).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

RowFn = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_CHUNK_SIZE = 256


@dataclass
class Chunk:
    """A slice of units: the flat student rows they read, and the function giving their losses.

    positions: `[n]` long, row indices into `student_logits.view(-1, V)`.
    units: `[u]` long, which units this chunk computes.
    row_unit: `[n]` long, the unit each row belongs to (for scaling the gradient in backward).
    fn: maps the gathered rows `[n, V]` to the losses of `units`, `[u]`.
    """

    positions: torch.Tensor
    units: torch.Tensor
    row_unit: torch.Tensor
    fn: RowFn


class _ChunkedRowLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, num_units: int, chunks: Callable[[], Iterator[Chunk]]):
        flat = student_logits.detach().reshape(-1, student_logits.shape[-1])
        needs_grad = ctx.needs_input_grad[0]
        out = torch.zeros(num_units, dtype=_compute_dtype(student_logits), device=student_logits.device)
        grad = torch.zeros_like(flat) if needs_grad else None
        row_unit = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device) if needs_grad else None
        for chunk in chunks():
            rows = flat.index_select(0, chunk.positions)
            if needs_grad:
                rows.requires_grad_(True)
                with torch.enable_grad():
                    per_unit = chunk.fn(rows)
                    (row_grad,) = torch.autograd.grad(per_unit.sum(), rows)
                grad.index_copy_(0, chunk.positions, row_grad.to(grad.dtype))
                row_unit.index_copy_(0, chunk.positions, chunk.row_unit)
            else:
                with torch.no_grad():
                    per_unit = chunk.fn(rows)
            out.index_copy_(0, chunk.units, per_unit.detach().to(out.dtype))
        if needs_grad:
            ctx.save_for_backward(grad, row_unit)
            ctx.logits_shape = student_logits.shape
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if getattr(ctx, "consumed", False):
            raise RuntimeError("chunked distillation loss: backward ran twice; its gradient buffer is scaled in place")
        ctx.consumed = True
        grad, row_unit = ctx.saved_tensors
        scale = torch.cat([grad_output.to(grad.dtype), grad_output.new_zeros(1, dtype=grad.dtype)])
        grad.mul_(scale[row_unit].unsqueeze(-1))  # row_unit == -1 picks the appended zero
        return grad.view(ctx.logits_shape), None, None


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


def chunk_slices(total: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, total, chunk_size):
        yield slice(start, min(start + chunk_size, total))
