"""`params.yaml` as pydantic models: the one source of truth for the stage CLIs, `dvc.yaml` and the Prefect flow.

Every model forbids unknown keys, and `load_params` turns a validation failure into one `ParamsError` whose
lines name the field path (`chain.1.lmbda: Input should be less than or equal to 1`). Nothing is downloaded to
validate: hub ids are only checked for shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.data.demo import DemoConfig
from distill.models import ModelSpec
from distill.trainer.config import METHODS, SCHEDULES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Strict):
    source: str = Field("demo", description="'demo', a file/directory of jsonl/parquet/csv, or a hub dataset name")
    demo: DemoConfig = DemoConfig()
    max_chars: int = Field(8192, gt=0)
    seed: int = 0


class TokenizerParams(_Strict):
    """A tokenizer trained on the prepared data (demo), when a model has no pretrained one."""

    kind: Literal["byte_level_bpe", "metaspace_unigram"]
    vocab_size: int = Field(ge=300, le=1_000_000)


class ModelParams(_Strict):
    """A model of the chain: `pretrained` (hub id or path) or built from `spec` with a `tokenizer` from the
    `tokenizers` table."""

    pretrained: str | None = None
    spec: ModelSpec | None = None
    tokenizer: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelParams:
        if (self.pretrained is None) == (self.spec is None):
            raise ValueError("give exactly one of `pretrained` (hub id or path) and `spec` (build from scratch)")
        if self.spec is not None and self.tokenizer is None:
            raise ValueError("a model built from `spec` needs `tokenizer` (a name from the `tokenizers` table)")
        return self


class SFTParams(_Strict):
    max_steps: int = Field(600, gt=0)
    learning_rate: float = Field(2e-3, gt=0)
    batch_size: int = Field(32, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    seed: int = 0
    nproc_per_node: int = Field(1, ge=1, description="> 1: train under torchrun, one process per GPU")


class HopParams(_Strict):
    """One distillation stage: `teacher` → `student` (names from `models`)."""

    student: str
    teacher: str
    method: str = "gold"
    lmbda: float = Field(0.5, ge=0, le=1)
    lmbda_schedule: str = "constant"
    lmbda_warmup_steps: int = Field(0, ge=0)
    beta: float = Field(0.5, ge=0, le=1)
    loss_temperature: float = Field(1.0, gt=0)
    sft_weight: float = Field(0.0, ge=0)
    max_steps: int = Field(300, gt=0)
    learning_rate: float = Field(2e-3, gt=0)
    batch_size: int = Field(32, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(48, gt=0)
    seed: int = 0
    nproc_per_node: int = Field(1, ge=1, description="> 1: train under torchrun, one process per GPU")

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"must be one of {METHODS}")
        return value

    @field_validator("lmbda_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if value not in SCHEDULES:
            raise ValueError(f"must be one of {SCHEDULES}")
        return value


class EvalParams(_Strict):
    limit: int | None = Field(None, gt=0, description="evaluate on the first N test rows (None: all)")
    batch_size: int = Field(64, gt=0)
    max_new_tokens: int = Field(48, gt=0)


class GateParams(_Strict):
    """Promotion gates on the final student; None disables a gate."""

    min_student_accuracy: float | None = Field(None, ge=0, le=1)
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="teacher accuracy − student accuracy")
    min_speedup: float | None = Field(None, gt=0, description="student generation tokens/s ÷ teacher's")
    max_student_parameters: int | None = Field(None, gt=0)


class PipelineParams(_Strict):
    data: DataParams = DataParams()
    tokenizers: dict[str, TokenizerParams] = {}
    models: dict[str, ModelParams]
    teacher_training: SFTParams = SFTParams()
    chain: list[HopParams] = Field(min_length=1)
    evaluation: EvalParams = EvalParams()
    gates: GateParams = GateParams()
    artifacts: str = "artifacts"

    @model_validator(mode="after")
    def _references(self) -> PipelineParams:
        if "teacher" not in self.models:
            raise ValueError("models: needs a model named 'teacher' (the top of the chain)")
        for name, model in self.models.items():
            if model.tokenizer is not None and model.tokenizer not in self.tokenizers:
                raise ValueError(f"models.{name}.tokenizer: {model.tokenizer!r} is not in `tokenizers`")
        trained = {"teacher"}
        for i, hop in enumerate(self.chain):
            for role in ("student", "teacher"):
                if getattr(hop, role) not in self.models:
                    raise ValueError(f"chain.{i}.{role}: {getattr(hop, role)!r} is not in `models`")
            if hop.teacher not in trained:
                raise ValueError(f"chain.{i}.teacher: {hop.teacher!r} is not trained by an earlier stage")
            if hop.student in trained:
                raise ValueError(f"chain.{i}.student: {hop.student!r} is already trained earlier in the chain")
            trained.add(hop.student)
        if self.chain[-1].student != "student":
            raise ValueError(f"chain.{len(self.chain) - 1}.student: the last model of the chain must be named "
                             "'student' (dvc.yaml's registry artifact and the gates refer to it)")
        return self

    @property
    def student(self) -> str:
        """The last model of the chain: the one the gates judge and promotion publishes."""
        return self.chain[-1].student

    @property
    def model_order(self) -> list[str]:
        return ["teacher", *(hop.student for hop in self.chain)]

    def hop(self, student: str) -> HopParams:
        for hop in self.chain:
            if hop.student == student:
                return hop
        raise KeyError(f"no chain hop trains {student!r} (hops: {[h.student for h in self.chain]})")

    def path(self, *parts: str) -> Path:
        return Path(self.artifacts).joinpath(*parts)


class ParamsError(ValueError):
    """params.yaml is malformed; the message lists each bad field."""


def load_params(path: str | Path = "params.yaml") -> PipelineParams:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such parameters file") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return PipelineParams.model_validate(raw)
    except ValidationError as error:
        lines = [f"{path}: {error.error_count()} invalid field(s):"]
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"]) or "(top level)"
            lines.append(f"  {where}: {item['msg']}")
        raise ParamsError("\n".join(lines)) from None
