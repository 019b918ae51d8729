"""The evaluation metrics, each a local `evaluate` module in `metrics/<name>/<name>.py`, loaded by path only.

Metrics are pure numbers in, numbers out (no models inside); the runner (`distill.evaluation.runner`) computes
the per-row or per-position inputs. Loading never touches the Hugging Face Hub: `evaluate.load` is given the
module's local folder, and the results are kept in memory (no arrow cache files).
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES: tuple[str, ...] = (
    "exact_match",
    "accuracy_by_length",
    "perplexity_from_nll",
    "distinct_n",
    "teacher_agreement",
    "tail_coverage",
)


def metric_path(name: str) -> Path:
    """The local folder of metric `name` (raises `ValueError` for an unknown name)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; the metrics are {', '.join(METRIC_NAMES)}")
    return METRICS_DIR / name


def load_metric(name: str):
    """`evaluate.load` of the local module `name` (an `evaluate.Metric`), results kept in memory."""
    import evaluate  # imported here: importing evaluate (and datasets) takes seconds

    return evaluate.load(str(metric_path(name)), keep_in_memory=True)
