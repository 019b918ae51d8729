"""Distinct-n (Li et al., 2016), pooled over all predictions, as a local `evaluate` metric.

Each prediction is a sequence of units: a string is split on whitespace into words; a list of tokens (strings or
ints) is used as given. n-grams are taken inside each prediction (never across two). For each order n:

    distinct_n = |{distinct n-grams over all predictions}| / (number of n-grams over all predictions)

A corpus with no n-gram of order n (every prediction shorter than n) has distinct_n = 0.0. An empty list of
predictions, or an order below 1, raises a `ValueError`.
"""

import datasets

from distill.evaluation.metrics import base

_DESCRIPTION = __doc__
_INPUTS = """
Args:
    predictions: list of str (split on whitespace), or list of token lists (str or int).
    orders: the n-gram orders to report, default (1, 2).
Returns:
    {"distinct_1": float, "distinct_2": float, ...} one key per order, each in [0, 1].
"""


class DistinctN(base.CheckedMetric):
    NAME = "distinct_n"
    INPUTS = ("predictions",)
    DESCRIPTION = _DESCRIPTION
    INPUTS_DESCRIPTION = _INPUTS
    FEATURES = (
        datasets.Features({"predictions": datasets.Value("string")}),
        datasets.Features({"predictions": datasets.Sequence(datasets.Value("string"))}),
        datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64"))}),
    )

    def _compute(self, predictions, orders=(1, 2)) -> dict:
        orders = (orders,) if isinstance(orders, int) else tuple(orders)
        if not orders or min(orders) < 1:
            raise ValueError(f"distinct_n: orders must be integers >= 1, got {orders}")
        units = [p.split() if isinstance(p, str) else list(p) for p in predictions]
        out = {}
        for n in orders:
            grams = [tuple(seq[i : i + n]) for seq in units for i in range(len(seq) - n + 1)]
            out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
        return out
