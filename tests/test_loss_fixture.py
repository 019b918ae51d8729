"""Precomputed loss values: a silent change to any loss's math fails here.

Inputs are built from closed-form expressions (no RNG), so the fixture does not depend on a generator's stream.
Regenerate deliberately, after an intended change, with `python -m tests.test_loss_fixture --write`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import losses
from distill.align import AlignedGroups, SpanAlignment

FIXTURE = Path(__file__).parent / "fixtures" / "loss_values.json"


def _logits(batch: int, length: int, vocab: int, phase: float) -> torch.Tensor:
    b, t, v = torch.meshgrid(torch.arange(batch), torch.arange(length), torch.arange(vocab), indexing="ij")
    return (3 * torch.sin(1.3 * v + 0.7 * t + 2.1 * b + phase) + 0.5 * torch.cos(0.37 * v * (t + 1))).double()


class _Map:
    """A fixed vocabulary map (the real `VocabMap` is built from tokenizers; this pins ids for the fixture)."""

    student_ids = torch.tensor([0, 2, 3, 7, 8])
    teacher_ids = torch.tensor([1, 2, 5, 6, 10])
    num_matched = 5


def compute() -> dict[str, float]:
    student, teacher = _logits(2, 5, 9, 0.0), _logits(2, 5, 9, 1.0)
    mask = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 1, 1]], dtype=torch.bool)
    values = {
        "forward_kl": losses.forward_kl(student, teacher, mask),
        "forward_kl_T2": losses.forward_kl(student, teacher, mask, temperature=2.0),
        "reverse_kl": losses.reverse_kl(student, teacher, mask),
        "jsd_0.5": losses.generalized_jsd(student, teacher, mask, beta=0.5),
        "jsd_0.1": losses.generalized_jsd(student, teacher, mask, beta=0.1),
        "skew_kl_0.1": losses.skew_kl(student, teacher, mask, alpha=0.1),
        "skew_reverse_kl_0.1": losses.skew_reverse_kl(student, teacher, mask, alpha=0.1),
        "tvd": losses.tvd(student, teacher, mask),
    }
    top = teacher.log_softmax(-1).topk(3, dim=-1)
    values["sparse_forward_kl_k3"] = losses.sparse_forward_kl(student, top.indices, top.values, mask)
    big_teacher = _logits(2, 4, 12, 0.5)
    values["uld_positional"] = losses.uld(student[:, :4], big_teacher, mask[:, :4])
    alignment = AlignedGroups.from_alignments(
        [SpanAlignment(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 2, 2]), 3),
         SpanAlignment(np.array([0, 1, 1, 2, 3]), np.array([0, 0, 1, 2]), 4)],
        torch.tensor([[1, 4, 2, 8, 0], [3, 3, 5, 6, 7]]), torch.tensor([[2, 9, 11, 4], [0, 1, 7, 5]]),
    )
    grouped = torch.ones(2, 5, dtype=torch.bool)
    for merge in ("bayesian", "observed"):
        values[f"uld_aligned_{merge}"] = losses.uld(student, big_teacher, grouped, alignment=alignment, merge=merge)
    out = losses.gold(student, big_teacher, grouped, _Map(), alignment=alignment, beta=0.5)
    values.update({"gold": out.loss, "gold_matched": out.matched, "gold_unmatched": out.unmatched})
    fixed = losses.gold(student, big_teacher, grouped, _Map(), alignment=alignment, beta=0.0, matched_weight=1.0,
                        unmatched_weight=0.5)
    values["gold_fixed_beta0"] = fixed.loss
    return {name: float(value) for name, value in values.items()}


def test_loss_values_unchanged():
    expected = json.loads(FIXTURE.read_text())
    actual = compute()
    assert set(actual) == set(expected), "the fixture and the computed losses name different values"
    changed = {name: (expected[name], actual[name]) for name in expected
               if actual[name] != pytest.approx(expected[name], rel=1e-9, abs=1e-12)}
    assert not changed, f"loss values changed (expected, actual): {changed}"


if __name__ == "__main__" and "--write" in sys.argv:
    FIXTURE.write_text(json.dumps(compute(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
