"""Teacher–student agreement from per-unit values computed by the caller, as a local `evaluate` metric.

A unit is one scored position (same tokenizer) or one aligned span group (two tokenizers); the caller computes
each unit's forward KL, KL(p_T ‖ p_S) = Σ_v p_T(v)·(log p_T(v) − log p_S(v)), and whether both sides' most likely
token is the same. Then, pooled over the N units:

    mean_kl        = (1/N) · Σ_u kl_u
    top1_agreement = (1/N) · Σ_u top1_agree_u

Empty inputs, lists of different lengths, and NaN or negative KL values (beyond -1e-9 rounding) raise a
`ValueError`; an infinite KL is kept (the mean is then inf).
"""

import math

import datasets
import evaluate

_DESCRIPTION = __doc__
_INPUTS = """
Args:
    kl: list of float, the forward KL of each unit (nats).
    top1_agree: list of bool, whether teacher and student agree on the most likely token of each unit.
Returns:
    {"mean_kl": float, "top1_agreement": float in [0, 1], "num_units": int}
"""


def _check_inputs(name: str, inputs: dict) -> None:
    lengths = {key: len(value) for key, value in inputs.items() if value is not None}
    if not lengths or min(lengths.values()) == 0:
        raise ValueError(f"{name}: no inputs (empty {sorted(inputs)}); there is nothing to score")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{name}: inputs of different lengths {lengths}")


class TeacherAgreement(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"kl": datasets.Value("float64"), "top1_agree": datasets.Value("bool")}),
        )

    def compute(self, **kwargs):
        """Score the inputs; empty inputs raise a `ValueError` (evaluate itself would raise an IndexError)."""
        _check_inputs("teacher_agreement", {k: kwargs.get(k) for k in ("kl", "top1_agree")})
        return super().compute(**kwargs)

    def _compute(self, kl, top1_agree) -> dict:
        if any(math.isnan(x) or x < -1e-9 for x in kl):
            raise ValueError("teacher_agreement: KL values must be >= 0 (got NaN or a negative value)")
        n = len(kl)
        return {"mean_kl": math.fsum(kl) / n, "top1_agreement": sum(map(bool, top1_agree)) / n, "num_units": n}
