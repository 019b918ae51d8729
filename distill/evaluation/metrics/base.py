"""What every local metric shares: its `MetricInfo`, and a check of its inputs before `evaluate` sees them.

Metric scripts import this *module* (`from distill.evaluation.metrics import base`), not the class: evaluate
takes the first metric class it finds in a script's namespace as the script's metric.
"""

from __future__ import annotations

import evaluate


def check_inputs(name: str, inputs: dict) -> None:
    """Non-empty inputs of equal length; evaluate itself would fail on empty ones with an IndexError."""
    lengths = {key: len(value) for key, value in inputs.items() if value is not None}
    if not lengths or min(lengths.values()) == 0:
        raise ValueError(f"{name}: no inputs (empty {sorted(inputs)}); there is nothing to score")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{name}: inputs of different lengths {lengths}")


class CheckedMetric(evaluate.Metric):
    """A metric with `NAME`, checked `INPUTS`, `DESCRIPTION`, `INPUTS_DESCRIPTION` and `FEATURES`."""

    NAME: str = ""
    INPUTS: tuple[str, ...] = ()
    DESCRIPTION: str = ""
    INPUTS_DESCRIPTION: str = ""
    FEATURES = None  # one datasets.Features, or a tuple of alternatives

    def _info(self) -> evaluate.MetricInfo:
        features = list(self.FEATURES) if isinstance(self.FEATURES, tuple) else self.FEATURES
        return evaluate.MetricInfo(description=self.DESCRIPTION, citation="",
                                   inputs_description=self.INPUTS_DESCRIPTION, features=features)

    def compute(self, **kwargs):
        """Score the inputs; empty or unequal inputs raise a `ValueError` naming the metric."""
        check_inputs(self.NAME, {k: kwargs.get(k) for k in self.INPUTS})
        return super().compute(**kwargs)
