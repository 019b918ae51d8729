"""Accuracy by answer length, as a local `evaluate` metric.

For every length L present in `lengths`:

    by_length[L] = (1/N_L) · Σ_{i: lengths_i = L} correct_i,      counts[L] = N_L

and `accuracy` = (1/N) · Σ_i correct_i over all rows. Keys are ints, in increasing order. Empty inputs or lists
of different lengths raise a `ValueError`; negative lengths raise too.
"""

import datasets

from distill.evaluation.metrics import base

_DESCRIPTION = __doc__
_INPUTS = """
Args:
    correct: list of bool, whether each row was answered correctly.
    lengths: list of int, the length bucket of each row (e.g. the answer's length).
Returns:
    {"by_length": {int: float}, "counts": {int: int}, "accuracy": float}
"""


class AccuracyByLength(base.CheckedMetric):
    NAME = "accuracy_by_length"
    INPUTS = ("correct", "lengths")
    DESCRIPTION = _DESCRIPTION
    INPUTS_DESCRIPTION = _INPUTS
    FEATURES = datasets.Features({"correct": datasets.Value("bool"), "lengths": datasets.Value("int64")})

    def _compute(self, correct, lengths) -> dict:
        if min(lengths) < 0:
            raise ValueError(f"accuracy_by_length: negative length {min(lengths)}")
        hits: dict[int, int] = {}
        counts: dict[int, int] = {}
        for ok, length in zip(correct, lengths, strict=True):
            counts[length] = counts.get(length, 0) + 1
            hits[length] = hits.get(length, 0) + bool(ok)
        keys = sorted(counts)
        return {
            "by_length": {k: hits[k] / counts[k] for k in keys},
            "counts": {k: counts[k] for k in keys},
            "accuracy": sum(hits.values()) / len(correct),
        }
