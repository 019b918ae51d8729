"""distill: knowledge distillation of LLMs — losses, cross-tokenizer alignment, trainer, data and evaluation.

This package is the library; it knows nothing about Prefect or DVC (see flows/, tasks/, dvc.yaml).
"""

__version__ = "0.1.0"
