"""Supervised fine-tuning on (prompt, completion) pairs with the prompt masked out of the loss.

This is the teacher stage of the demo (train the teacher from scratch) and the SFT baseline for students. Each
example is tokenised with :func:`distill.data.tokenize.encode_example` -- prompt and completion separately, labels
``-100`` on the prompt -- and batches are right-padded by :class:`SFTCollator`. Training is a plain
``transformers.Trainer`` (the model shifts labels itself: position ``t`` predicts token ``t + 1``).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, Trainer, TrainingArguments

from distill.data.collate import prompt_of
from distill.data.tokenize import IGNORE_INDEX, encode_example

__all__ = ["SFTCollator", "pad_token_id", "tokenize_dataset", "train_sft"]

logger = logging.getLogger(__name__)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, falling back to EOS (padding is masked, so any id works that the model knows)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")


def tokenize_dataset(dataset: Dataset, tokenizer, *, max_length: int | None = None) -> Dataset:
    """Columns ``input_ids``, ``labels`` and ``prompt_length`` from ``prompt``/``prompt_messages`` + ``completion``.

    With ``max_length``, sequences are cut at the end (the completion's tail first); rows left with no completion
    token to learn from are dropped, with a warning.
    """
    if "completion" not in dataset.column_names or "prompt" not in dataset.column_names:
        raise ValueError(f"dataset needs 'prompt' and 'completion' columns, has {dataset.column_names}")

    def encode(example: dict[str, Any]) -> dict[str, Any]:
        encoded = encode_example(tokenizer, prompt_of(example), example["completion"])
        input_ids, labels = encoded.input_ids, encoded.labels
        if max_length is not None:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        return {"input_ids": input_ids, "labels": labels, "prompt_length": encoded.prompt_length}

    tokenized = dataset.map(encode, remove_columns=dataset.column_names, desc="tokenizing")
    keep = [i for i, labels in enumerate(tokenized["labels"]) if any(t != IGNORE_INDEX for t in labels)]
    if len(keep) < len(tokenized):
        dropped = len(tokenized) - len(keep)
        logger.warning("dropped %d of %d rows with no completion token left", dropped, len(tokenized))
        tokenized = tokenized.select(keep)
    if len(tokenized) == 0:
        raise ValueError("no example has a completion token to train on")
    return tokenized


class SFTCollator:
    """Right-pads ``input_ids`` with ``pad_token_id`` (attention 0) and ``labels`` with ``-100``: ``[B, T]`` each."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_sft(
    model: PreTrainedModel,
    tokenizer,
    dataset: Dataset,
    *,
    output_dir: str,
    max_steps: int = 200,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    eval_dataset: Dataset | None = None,
    seed: int = 0,
    logging_steps: int = 10,
    warmup_steps: float = 0.1,
    lr_scheduler_type: str = "cosine",
    weight_decay: float = 0.0,
    gradient_accumulation_steps: int = 1,
    max_length: int | None = None,
    save_strategy: str = "no",
    save_steps: int = 500,
    eval_steps: int | None = None,
    callbacks: list | None = None,
    **training_args: Any,
) -> dict[str, Any]:
    """Train ``model`` in place on ``dataset`` (columns ``prompt``, ``prompt_messages``, ``completion``).

    Loss: mean cross-entropy over completion tokens (and EOS) only. ``warmup_steps`` below 1 is a fraction of
    ``max_steps``; the schedule is ``lr_scheduler_type`` (``"cosine"`` or ``"linear"``, ...) after warmup.
    ``max_length`` defaults to the model's ``max_position_embeddings``. ``eval_dataset`` is evaluated at the end
    (and every ``eval_steps`` if given). Extra keyword arguments go to ``TrainingArguments``. Runs on CUDA when
    available, else on the CPU. Checkpoints (``save_strategy="steps"``) go to ``output_dir``; saving the final
    model is the caller's job (:func:`distill.models.save_model`).

    Returns ``train_loss`` (the last logged training loss), ``train_loss_mean`` (over the whole run),
    ``first_train_loss`` (the first logged one), ``steps``, ``log_history`` and, with ``eval_dataset``,
    ``eval_loss``.
    """
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    train_data = tokenize_dataset(dataset, tokenizer, max_length=max_length)
    eval_data = tokenize_dataset(eval_dataset, tokenizer, max_length=max_length) if eval_dataset is not None else None
    periodic_eval = eval_data is not None and eval_steps is not None
    args = {
        "output_dir": output_dir,
        "max_steps": max_steps,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "learning_rate": learning_rate,
        "lr_scheduler_type": lr_scheduler_type,
        "warmup_steps": warmup_steps,
        "weight_decay": weight_decay,
        "logging_steps": logging_steps,
        "logging_first_step": True,
        "save_strategy": save_strategy,
        "save_steps": save_steps,
        "eval_strategy": "steps" if periodic_eval else "no",
        "eval_steps": eval_steps if periodic_eval else None,
        "seed": seed,
        "data_seed": seed,
        "report_to": [],
        "use_cpu": not torch.cuda.is_available(),
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "save_only_model": True,
    }
    if 0 < warmup_steps < 1 and "warmup_ratio" in inspect.signature(TrainingArguments.__init__).parameters:
        args["warmup_ratio"], args["warmup_steps"] = warmup_steps, 0  # transformers 4.x: a fraction is a ratio
    args.update(training_args)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=SFTCollator(pad_token_id(tokenizer)),
        callbacks=callbacks,
    )
    output = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result: dict[str, Any] = {
        "train_loss": losses[-1] if losses else output.training_loss,
        "train_loss_mean": output.training_loss,
        "first_train_loss": losses[0] if losses else None,
        "steps": trainer.state.global_step,
        "log_history": list(trainer.state.log_history),
    }
    if eval_data is not None:
        result["eval_loss"] = trainer.evaluate()["eval_loss"]
    model.eval()
    return result
