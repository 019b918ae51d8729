"""Building, saving and loading causal LMs and their tokenizers.

* :class:`ModelSpec` + :func:`build_model`: a fresh, seeded model of the ``llama`` or ``qwen2`` family sized for a
  tokenizer (the demo teacher, bridge and student, see :data:`DEMO_CHAIN`).
* :func:`save_model`: an HF folder (safetensors + ``tokenizer.json``) written atomically, refused when
  ``AutoTokenizer`` would not load the tokenizer back unchanged beside that model's ``config.json``.
* :func:`load_model` / :func:`load_tokenizer`: a hub id (``"Qwen/Qwen2.5-1.5B"``) or a local folder, through the
  same ``Auto*`` classes users and ``transformers.pipeline`` take; ``trust_remote_code`` only when asked.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel, Qwen2Config

from distill.data.tokenizers import TokenizerRoundTripError, check_round_trip, save_tokenizer
from distill.io import atomic_directory

__all__ = [
    "DEMO_CHAIN",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "load_model",
    "load_tokenizer",
    "save_model",
]

_CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ModelSpec(BaseModel):
    """Architecture of a decoder-only model; the defaults are a tiny CPU model (~100k parameters + embeddings).

    ``num_heads`` must divide ``hidden_size`` and ``num_kv_heads`` must divide ``num_heads`` (grouped-query
    attention when smaller). Word embeddings are tied to the LM head by default, as in small Llama 3.2 / Qwen2.5
    checkpoints: at these sizes an untied head would double the embedding parameters for nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(176, gt=0)
    max_position_embeddings: int = Field(512, gt=0)
    tie_word_embeddings: bool = True

    @model_validator(mode="after")
    def _check_heads(self) -> ModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        return self

    def to_config(self, tokenizer) -> LlamaConfig | Qwen2Config:
        """The HF config for this spec, with vocabulary size and special-token ids taken from ``tokenizer``."""
        config_class = _CONFIG_CLASSES[self.family]
        return config_class(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )


#: Teacher → bridge → student of the demo, all ``llama`` configs: transformers 5 rebuilds a tokenizer saved beside a
#: ``qwen2`` config (adding NFC, swapping the pre-tokenizer), which our trained tokenizers do not survive; the
#: tokenizer mismatch of the demo is carried by the tokenizers themselves. With an 800-token vocabulary (tied
#: embeddings counted once) the teacher has 1,777,344 parameters, the bridge 619,392 and the student 210,320: 8.5x
#: in all, hops of 2.9x each (600-1000 tokens: teacher 1.74-1.82M, student 0.19-0.23M, 8.0-8.9x, hops <= 3.06x).
#: One bridge is the upper end (~3x per hop) of the capacity-gap rule of thumb: ``plan_chain(teacher, student,
#: max_ratio=3.0)`` gives this chain, the stricter default ``max_ratio=2.5`` would ask for two bridges.
DEMO_CHAIN: dict[str, ModelSpec] = {
    "teacher": ModelSpec(hidden_size=192, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512),
    "bridge": ModelSpec(hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=320),
    "student": ModelSpec(hidden_size=80, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=224),
}


def build_model(spec: ModelSpec, tokenizer, *, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised causal LM for ``spec``, sized to ``tokenizer`` (``vocab_size = len(tokenizer)``).

    The same ``seed`` gives the same weights; the global RNG state is left as it was.
    """
    config = spec.to_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.float()


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters, tied weights (embeddings shared with the LM head) counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def save_model(model: PreTrainedModel, tokenizer, path: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` to the folder ``path``, atomically.

    Everything is written to a temporary sibling folder first and checked there: the weights are safetensors and
    no pickle file was written, and ``AutoTokenizer.from_pretrained`` on the folder gives the same ids as
    ``tokenizer`` (:func:`~distill.data.tokenizers.check_round_trip`). Only then is the folder renamed to ``path``
    (an existing folder there is replaced). On any failure the previous contents of ``path`` are left untouched
    and no partial folder remains.

    Raises:
        TokenizerRoundTripError: the tokenizer does not survive being saved beside this model family's config
            (e.g. a Metaspace/SentencePiece tokenizer with a ``qwen2`` model); build the model with the ``llama``
            family instead.
        ValueError: the tokenizer has more tokens than the model's embedding rows, or ``path`` is a file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    vocab_size = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embedding rows")
    with atomic_directory(path) as staging:
        save_kwargs = {"safe_serialization": True} if _accepts(model.save_pretrained, "safe_serialization") else {}
        model.save_pretrained(staging, **save_kwargs)
        save_tokenizer(tokenizer, staging)
        _check_no_pickle(staging)
        try:
            check_round_trip(tokenizer, staging)
        except TokenizerRoundTripError as err:
            family = getattr(model.config, "model_type", "?")
            raise TokenizerRoundTripError(
                f"refusing to save to {path}: {err} This tokenizer cannot be stored beside a {family!r} config; "
                "build the model with ModelSpec(family='llama') (llama configs keep tokenizer.json as saved)."
            ) from err
    return path


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[PreTrainedModel, object]:
    """Load ``(model, tokenizer)`` from a hub id (e.g. ``"Qwen/Qwen2.5-1.5B"``) or a local folder.

    ``dtype`` (``torch.float32``, ``torch.bfloat16``, ``"auto"``, ...) defaults to transformers' own default (the
    checkpoint's dtype in 5.x); ``device`` to where transformers puts it (the CPU). Remote code is never executed
    unless ``trust_remote_code=True``. The tokenizer gets a pad token (its EOS) when it has none, so batches can be
    padded.
    """
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    if dtype is not None:
        kwargs["dtype"] = dtype  # transformers >= 4.56 (5.x dropped the old name `torch_dtype`)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    return model, tokenizer


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False, revision: str | None = None):
    """``AutoTokenizer.from_pretrained`` on a hub id or folder; the EOS token doubles as pad token if none is set."""
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _check_no_pickle(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    pickled = [p.name for p in files if p.suffix in _PICKLE_SUFFIXES]
    if pickled or not any(p.suffix == ".safetensors" for p in files):
        raise RuntimeError(f"expected safetensors weights and no pickle files, got {sorted(p.name for p in files)}")
