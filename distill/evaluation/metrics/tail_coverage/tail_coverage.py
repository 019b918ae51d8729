"""Teacher-tail coverage, as a local `evaluate` metric.

How much of the teacher's probability mass *outside its top-1 token* the student also puts there. At one
position (or aligned unit) u with teacher distribution p_T, student distribution p_S and t* = argmax_v p_T(v):

    covered_u = Σ_{v ≠ t*} min(p_S(v), p_T(v))          total_u = Σ_{v ≠ t*} p_T(v)

The caller computes these per unit; this metric pools them:

    tail_coverage  = Σ_u covered_u / Σ_u total_u        (in [0, 1]; 1 = the student covers the whole tail)
    mean_tail_mass = (1/N) · Σ_u total_u                (how much tail the teacher has at all)

Pooling weights units by their tail mass, so near-one-hot teacher positions (no tail to cover) barely count.
If the teacher has no tail mass at all (Σ total = 0) there is nothing to cover and tail_coverage is 1.0.
Empty inputs, lists of different lengths, negative or non-finite masses, or covered > total (beyond 1e-6)
raise a `ValueError`.
"""

import math

import datasets

from distill.evaluation.metrics import base

_DESCRIPTION = __doc__
_INPUTS = """
Args:
    covered: list of float, Σ_{v≠t*} min(p_S(v), p_T(v)) per unit.
    total: list of float, Σ_{v≠t*} p_T(v) per unit.
Returns:
    {"tail_coverage": float in [0, 1], "mean_tail_mass": float, "num_units": int}
"""


class TailCoverage(base.CheckedMetric):
    NAME = "tail_coverage"
    INPUTS = ("covered", "total")
    DESCRIPTION = _DESCRIPTION
    INPUTS_DESCRIPTION = _INPUTS
    FEATURES = datasets.Features({"covered": datasets.Value("float64"), "total": datasets.Value("float64")})

    def _compute(self, covered, total) -> dict:
        for c, t in zip(covered, total, strict=True):
            if not (math.isfinite(c) and math.isfinite(t)) or c < 0 or t < 0:
                raise ValueError(f"tail_coverage: masses must be finite and >= 0, got covered={c}, total={t}")
            if c > t + 1e-6:
                raise ValueError(f"tail_coverage: covered mass {c} exceeds the teacher's tail mass {t}")
        covered_sum, total_sum = math.fsum(covered), math.fsum(total)
        coverage = 1.0 if total_sum == 0 else min(covered_sum / total_sum, 1.0)
        return {"tail_coverage": coverage, "mean_tail_mass": total_sum / len(total), "num_units": len(total)}
