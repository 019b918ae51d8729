"""Exact match, as a local `evaluate` metric.

    exact_match = (1/N) · Σ_i [strip(prediction_i) == strip(reference_i)]

Two input forms (the first that fits is used):
- strings: `predictions` and `references` are texts, compared after stripping surrounding whitespace;
- booleans: `predictions` are verdicts already computed (e.g. by a task's answer checker) and `references` the
  expected verdicts (usually all True); the score is the share of equal pairs.

Empty inputs, or lists of different lengths, raise a `ValueError`.
"""

import datasets

from distill.evaluation.metrics import base

_DESCRIPTION = __doc__
_INPUTS = """
Args:
    predictions: list of str (or of bool, precomputed verdicts).
    references: list of str (or of bool, expected verdicts), same length.
Returns:
    {"exact_match": float in [0, 1]}
"""


class ExactMatch(base.CheckedMetric):
    NAME = "exact_match"
    INPUTS = ("predictions", "references")
    DESCRIPTION = _DESCRIPTION
    INPUTS_DESCRIPTION = _INPUTS
    FEATURES = (
        datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        datasets.Features({"predictions": datasets.Value("bool"), "references": datasets.Value("bool")}),
    )

    def _compute(self, predictions, references) -> dict:
        hits = sum(
            (p.strip() == r.strip()) if isinstance(p, str) else (bool(p) == bool(r))
            for p, r in zip(predictions, references, strict=True)
        )
        return {"exact_match": hits / len(predictions)}
