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

from distill.evaluation.metrics import base

_DESCRIPTION = __doc__
_INPUTS = """
Args:
    kl: list of float, the forward KL of each unit (nats).
    top1_agree: list of bool, whether teacher and student agree on the most likely token of each unit.
Returns:
    {"mean_kl": float, "top1_agreement": float in [0, 1], "num_units": int}
"""


class TeacherAgreement(base.CheckedMetric):
    NAME = "teacher_agreement"
    INPUTS = ("kl", "top1_agree")
    DESCRIPTION = _DESCRIPTION
    INPUTS_DESCRIPTION = _INPUTS
    FEATURES = datasets.Features({"kl": datasets.Value("float64"), "top1_agree": datasets.Value("bool")})

    def _compute(self, kl, top1_agree) -> dict:
        if any(math.isnan(x) or x < -1e-9 for x in kl):
            raise ValueError("teacher_agreement: KL values must be >= 0 (got NaN or a negative value)")
        n = len(kl)
        return {"mean_kl": math.fsum(kl) / n, "top1_agreement": sum(map(bool, top1_agree)) / n, "num_units": n}
