"""`DistillConfig`: `transformers.TrainingArguments` plus the distillation knobs.

Every field is validated in `__post_init__` with an error that names it. The defaults are a sensible GOLD run:
cross-tokenizer capable, half on-policy, chain-rule span merging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

METHODS = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd", "uld", "gold")
CROSS_TOKENIZER_METHODS = ("uld", "gold")
SCHEDULES = ("constant", "linear", "adaptive")


@dataclass
class DistillConfig(TrainingArguments):
    """Training arguments for `DistillTrainer` (all of `TrainingArguments`, plus the fields below)."""

    method: str = field(default="gold", metadata={"help": f"distillation objective, one of {METHODS}"})
    beta: float = field(default=0.5, metadata={"help": "generalized JSD β (jsd, and gold's matched term)"})
    alpha: float = field(default=0.1, metadata={"help": "skew α (skew_kl, skew_reverse_kl)"})
    loss_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of both sides in the loss"})
    merge: str = field(default="bayesian", metadata={"help": "span-group merge: bayesian (chain rule) or observed"})
    gold_matched_weight: float | None = field(default=None, metadata={"help": "fixed GOLD weight (None: adaptive)"})
    gold_unmatched_weight: float | None = field(default=None)
    sft_weight: float = field(default=0.0, metadata={"help": "weight of a cross-entropy term on the targets"})
    lmbda: float = field(default=0.5, metadata={"help": "share of micro-batches the student generates itself"})
    lmbda_schedule: str = field(default="constant", metadata={"help": f"one of {SCHEDULES}"})
    lmbda_warmup_steps: int = field(default=0, metadata={"help": "linear: steps to reach lmbda from 0"})
    lmbda_start: float = field(default=0.0, metadata={"help": "adaptive: the on-policy share at step 0"})
    lmbda_increment: float = field(default=0.1, metadata={"help": "adaptive: raise per stalled evaluation"})
    lmbda_patience: int = field(default=1, metadata={"help": "adaptive: evaluations without improvement to wait"})
    seq_kd: bool = field(default=False, metadata={"help": "off-policy batches use teacher generations"})
    max_new_tokens: int = field(default=64, metadata={"help": "length budget of a rollout"})
    generation_temperature: float = field(default=1.0)
    top_p: float = field(default=1.0)
    top_k: int = field(default=0)
    teacher_cache: str | None = field(default=None, metadata={"help": "offline top-k teacher cache (directory)"})
    loss_chunk_size: int | None = field(default=None, metadata={"help": "rows per loss chunk (None: automatic)"})
    teacher_head_in_loss_order: bool = field(default=True, metadata={
        "help": "gold: score with a copy of the teacher's output layer whose rows are in the loss's column order "
                "(matched tokens first), so the loss slices columns instead of gathering them; costs one more "
                "copy of the teacher's LM head in memory (distill.trainer.teacher_head)"})
    keep_freed_cpu_memory: bool = field(default=True, metadata={
        "help": "CPU runs: glibc keeps freed memory for reuse instead of page-faulting fresh logits-sized buffers "
                "every step (distill.cpu_memory; process-wide)"})
    remove_unused_columns: bool = field(default=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("method", self.method in METHODS, f"one of {METHODS}")
        self._check("merge", self.merge in ("bayesian", "observed"), "'bayesian' or 'observed'")
        self._check("lmbda_schedule", self.lmbda_schedule in SCHEDULES, f"one of {SCHEDULES}")
        for name in ("beta", "alpha", "lmbda", "lmbda_start", "lmbda_increment"):
            self._check(name, 0.0 <= getattr(self, name) <= 1.0, "in [0, 1]")
        for name in ("loss_temperature", "generation_temperature", "top_p"):
            self._check(name, getattr(self, name) > 0, "> 0")
        self._check("top_p", self.top_p <= 1.0, "in (0, 1]")
        self._check("max_new_tokens", self.max_new_tokens >= 1, ">= 1")
        self._check("sft_weight", self.sft_weight >= 0, ">= 0")
        self._check("lmbda_warmup_steps", self.lmbda_warmup_steps >= 0, ">= 0")
        self._check("lmbda_patience", self.lmbda_patience >= 1, ">= 1")
        self._check("loss_chunk_size", self.loss_chunk_size is None or self.loss_chunk_size >= 1, "None or >= 1")
        weights = (self.gold_matched_weight, self.gold_unmatched_weight)
        self._check("gold_matched_weight", (weights[0] is None) == (weights[1] is None),
                    "set together with gold_unmatched_weight (or neither, for adaptive weights)")
        self._check("gold_matched_weight", all(w is None or w >= 0 for w in weights), ">= 0")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: DistillTrainer reads the raw text columns")

    @staticmethod
    def _check(name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ValueError(f"DistillConfig.{name}: must be {expected}")

    @property
    def cross_tokenizer_capable(self) -> bool:
        return self.method in CROSS_TOKENIZER_METHODS
