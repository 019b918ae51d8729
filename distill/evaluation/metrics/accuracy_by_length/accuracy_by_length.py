"""Accuracy by answer length, as a local `evaluate` metric.

For every length L present in `lengths`:

    by_length[L] = (1/N_L) · Σ_{i: lengths_i = L} correct_i,      counts[L] = N_L

and `accuracy` = (1/N) · Σ_i correct_i over all rows. Keys are ints, in increasing order. Empty inputs or lists
of different lengths raise a `ValueError`; negative lengths raise too.
"""

import datasets
import evaluate

_DESCRIPTION = __doc__
_INPUTS = """
Args:
    correct: list of bool, whether each row was answered correctly.
    lengths: list of int, the length bucket of each row (e.g. the answer's length).
Returns:
    {"by_length": {int: float}, "counts": {int: int}, "accuracy": float}
"""


def _check_inputs(name: str, inputs: dict) -> None:
    lengths = {key: len(value) for key, value in inputs.items() if value is not None}
    if not lengths or min(lengths.values()) == 0:
        raise ValueError(f"{name}: no inputs (empty {sorted(inputs)}); there is nothing to score")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{name}: inputs of different lengths {lengths}")


class AccuracyByLength(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"correct": datasets.Value("bool"), "lengths": datasets.Value("int64")}),
        )

    def compute(self, **kwargs):
        """Score the inputs; empty inputs raise a `ValueError` (evaluate itself would raise an IndexError)."""
        _check_inputs("accuracy_by_length", {k: kwargs.get(k) for k in ("correct", "lengths")})
        return super().compute(**kwargs)

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
