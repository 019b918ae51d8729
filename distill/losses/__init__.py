"""Distillation objectives: pure functions of student logits and a teacher signal (no models inside).

Same tokenizer: `forward_kl`, `reverse_kl`, `generalized_jsd`, `skew_kl`, `skew_reverse_kl`, `tvd`, and
`sparse_forward_kl` for a top-k teacher cache. Any two tokenizers: `uld` and `gold`.
"""

from distill.losses.cross_vocab import GoldLoss, gold, uld
from distill.losses.sparse import sparse_forward_kl
from distill.losses.token_level import (
    divergence_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    tvd,
)

__all__ = [
    "GoldLoss",
    "divergence_loss",
    "forward_kl",
    "generalized_jsd",
    "gold",
    "reverse_kl",
    "skew_kl",
    "skew_reverse_kl",
    "sparse_forward_kl",
    "tvd",
    "uld",
]
