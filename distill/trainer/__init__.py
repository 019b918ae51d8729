"""`DistillTrainer` and `DistillConfig`: on/off-policy distillation on `transformers.Trainer`."""

from distill.trainer.config import METHODS, DistillConfig
from distill.trainer.objective import NonFiniteLossError
from distill.trainer.schedule import LambdaSchedule
from distill.trainer.trainer import DistillTrainer

__all__ = ["METHODS", "DistillConfig", "DistillTrainer", "LambdaSchedule", "NonFiniteLossError"]
