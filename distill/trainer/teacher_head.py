"""The teacher's output layer with its rows in GOLD's column order, so the loss reads slices instead of gathers.

GOLD splits the teacher's vocabulary into the tokens matched with the student's (aligned with `student_ids`) and
the rest. Read from logits in id order, the matched columns are a gather in random order: on the CPU it costs
about 9× a copy of the same columns (`bench/RESULTS.md`). A teacher head whose rows are permuted by
`VocabMap.loss_order` computes the same logits with their columns already in that order,
`z' = h · W[order]ᵀ (+ b[order])`, at the same cost as the original head; every elementwise step after the head
(softcapping, scaling) commutes with the permutation. The price is one copy of the head's weight (`Vt × H`).

The permuted head is installed only around the teacher's scoring forward (`output_head`), so generation with
the teacher (`seq_kd`) and everything else see the model as it was.
"""

from __future__ import annotations

import contextlib

from torch import nn

from distill.align import VocabMap


def loss_order_head(teacher: nn.Module, vocab_map: VocabMap) -> tuple[nn.Linear, VocabMap] | None:
    """A frozen copy of `teacher`'s output layer with its rows in `vocab_map.loss_order`, and the map for the
    logits it produces (`vocab_map.in_loss_order`). None when the output layer is not a plain `nn.Linear` (a
    quantised or custom head): the loss then gathers the columns from logits in id order."""
    get_head = getattr(teacher, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if type(head) is not nn.Linear:
        return None
    order = vocab_map.loss_order(head.out_features).to(head.weight.device)
    # built on the meta device and given the permuted rows: no random initialisation of a Vt × H matrix
    permuted = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None, device="meta")
    permuted.weight = nn.Parameter(head.weight.detach().index_select(0, order), requires_grad=False)
    if head.bias is not None:
        permuted.bias = nn.Parameter(head.bias.detach().index_select(0, order), requires_grad=False)
    return permuted, vocab_map.in_loss_order(head.out_features)


@contextlib.contextmanager
def output_head(model: nn.Module, head: nn.Module | None):
    """`model` with `head` as its output layer inside the block (nothing changes when `head` is None)."""
    if head is None:
        yield model
        return
    original = model.get_output_embeddings()
    model.set_output_embeddings(head)
    try:
        yield model
    finally:
        model.set_output_embeddings(original)
