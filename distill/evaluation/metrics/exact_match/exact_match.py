"""Exact match, as a local `evaluate` metric.

    exact_match = (1/N) · Σ_i [strip(prediction_i) == strip(reference_i)]

Two input forms (the first that fits is used):
- strings: `predictions` and `references` are texts, compared after stripping surrounding whitespace;
- booleans: `predictions` are verdicts already computed (e.g. by a task's answer checker) and `references` the
  expected verdicts (usually all True); the score is the share of equal pairs.

Empty inputs, or lists of different lengths, raise a `ValueError`.
"""

import datasets
import evaluate

_DESCRIPTION = __doc__
_INPUTS = """
Args:
    predictions: list of str (or of bool, precomputed verdicts).
    references: list of str (or of bool, expected verdicts), same length.
Returns:
    {"exact_match": float in [0, 1]}
"""


def _check_inputs(name: str, inputs: dict) -> None:
    lengths = {key: len(value) for key, value in inputs.items() if value is not None}
    if not lengths or min(lengths.values()) == 0:
        raise ValueError(f"{name}: no inputs (empty {sorted(inputs)}); there is nothing to score")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{name}: inputs of different lengths {lengths}")


class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features({"predictions": datasets.Value("bool"), "references": datasets.Value("bool")}),
            ],
        )

    def compute(self, **kwargs):
        """Score the inputs; empty inputs raise a `ValueError` (evaluate itself would raise an IndexError)."""
        _check_inputs("exact_match", {k: kwargs.get(k) for k in ("predictions", "references")})
        return super().compute(**kwargs)

    def _compute(self, predictions, references) -> dict:
        hits = sum(
            (p.strip() == r.strip()) if isinstance(p, str) else (bool(p) == bool(r))
            for p, r in zip(predictions, references, strict=True)
        )
        return {"exact_match": hits / len(predictions)}
