"""Evaluation: metrics as local `evaluate` modules, a runner that scores a model (and its agreement with a
teacher), and atomic JSON/PNG reports.

```python
from distill.evaluation import evaluate_model, plot_accuracy_by_length, write_report

metrics = evaluate_model(student, tok, dataset, check=task.check, teacher=teacher, teacher_tokenizer=t_tok,
                         max_new_tokens=64, batch_size=16)
write_report(metrics, "artifacts/eval/student.json")
plot_accuracy_by_length({"teacher": teacher_metrics, "student": metrics}, "artifacts/eval/by_length.png")
```
"""

from distill.evaluation.compare import UnitStats, cross_vocab_units, same_vocab_units
from distill.evaluation.metrics import METRIC_NAMES, load_metric, metric_path
from distill.evaluation.report import atomic_write_bytes, plot_accuracy_by_length, write_report
from distill.evaluation.runner import SCHEMA_VERSION, TEACHER_KEYS, evaluate_model

__all__ = [
    "METRIC_NAMES",
    "SCHEMA_VERSION",
    "TEACHER_KEYS",
    "UnitStats",
    "atomic_write_bytes",
    "cross_vocab_units",
    "evaluate_model",
    "load_metric",
    "metric_path",
    "plot_accuracy_by_length",
    "same_vocab_units",
    "write_report",
]
