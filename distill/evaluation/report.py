"""Writing evaluation results: the metrics as JSON and accuracy-by-length as a PNG, each written atomically.

Atomic: the content goes to a temporary file in the target's folder, is flushed to disk, and replaces the target
with `os.replace`, so a reader (DVC, a Prefect task, a concurrent stage) sees the old file or the new one, never
a partial one.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from distill.io import atomic_write_bytes, write_json


def write_report(metrics: dict, path: str | Path) -> Path:
    """Write `metrics` as indented, key-sorted JSON (non-finite floats as null, keys as strings), atomically."""
    return write_json(path, metrics)


def _by_length(result: Mapping) -> list[tuple[int, float]]:
    """`(length, accuracy)` points, sorted, from an `evaluate_model` result or a plain `{length: accuracy}`."""
    curve = result.get("accuracy_by_length", result)
    if not isinstance(curve, Mapping):
        raise ValueError(f"plot_accuracy_by_length: expected a mapping of length to accuracy, got {type(curve)}")
    return sorted((int(length), float(acc)) for length, acc in curve.items() if acc is not None)


def plot_accuracy_by_length(results: dict[str, dict], path: str | Path, *, title: str | None = None) -> Path:
    """One line per model (`results`: name → `evaluate_model` result, e.g. teacher / bridge / student), accuracy
    against answer length, written atomically as a PNG."""
    if not results:
        raise ValueError("plot_accuracy_by_length: no results to plot")
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    keys = {str(r.get("length_key", "answer_length")) for r in results.values() if isinstance(r, Mapping)}
    for name, result in results.items():
        points = _by_length(result)
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    axes.set_xlabel(keys.pop() if len(keys) == 1 else "length")
    axes.set_ylabel("accuracy")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(True, alpha=0.3)
    axes.set_title(title or "Accuracy by answer length")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(buffer.getvalue(), path)
