"""SFT: prompt masking in collated batches, and a few training steps that lower the loss on a trivial task."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from distill.data.collate import prompt_of
from distill.data.tokenize import IGNORE_INDEX, encode_completion, encode_prompt
from distill.models import ModelSpec, build_model
from distill.sft import SFTCollator, pad_token_id, tokenize_dataset, train_sft

TINY = ModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


def copy_task(n: int, seed: int = 0) -> Dataset:
    """``copy: 3 1 4`` → ``3 1 4``; every fourth row has its prompt as chat messages instead."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        digits = " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(2, 5)))
        messages = [{"role": "user", "content": f"copy: {digits}"}] if i % 4 == 0 else []
        rows.append({"id": str(i), "prompt": f"copy: {digits}\n", "prompt_messages": messages, "completion": digits})
    return Dataset.from_list(rows)


@pytest.mark.parametrize("tokenizer_name", ["bpe", "unigram"])
def test_collated_batch_masks_the_prompt(tokenizer_name: str, request: pytest.FixtureRequest) -> None:
    tokenizer: PreTrainedTokenizerFast = request.getfixturevalue(f"{tokenizer_name}_tokenizer")
    dataset = copy_task(8)
    tokenized = tokenize_dataset(dataset, tokenizer)
    batch = SFTCollator(pad_token_id(tokenizer))([tokenized[i] for i in range(len(tokenized))])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].dtype == torch.long
    for row, example in enumerate(dataset):
        prompt_ids = encode_prompt(tokenizer, prompt_of(example))
        completion_ids = encode_completion(tokenizer, example["completion"])  # ends with EOS
        n_prompt, n = len(prompt_ids), len(prompt_ids) + len(completion_ids)
        assert tokenized[row]["prompt_length"] == n_prompt
        ids, labels, mask = (batch[k][row].tolist() for k in ("input_ids", "labels", "attention_mask"))
        assert ids[:n_prompt] == prompt_ids
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert ids[n_prompt:n] == labels[n_prompt:n] == completion_ids  # the completion starts right after
        assert labels[n_prompt:n][-1] == tokenizer.eos_token_id
        assert mask == [1] * n + [0] * (len(mask) - n)
        assert labels[n:] == [IGNORE_INDEX] * (len(mask) - n)
        assert ids[n:] == [pad_token_id(tokenizer)] * (len(mask) - n)
    assert dataset[0]["prompt_messages"] and prompt_of(dataset[0]) == dataset[0]["prompt_messages"]
    assert prompt_of(dataset[1]) == dataset[1]["prompt"]


def test_collator_pads_to_a_multiple() -> None:
    batch = SFTCollator(0, pad_to_multiple_of=8)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7] + [-100] * 5]


def test_truncation_drops_rows_without_completion(bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    dataset = copy_task(4)
    n_prompt = len(encode_prompt(bpe_tokenizer, prompt_of(dataset[1])))
    tokenized = tokenize_dataset(dataset.select([1, 2]), bpe_tokenizer, max_length=n_prompt)
    assert len(tokenized) <= 1
    assert all(len(ids) <= n_prompt for ids in tokenized["input_ids"])
    with pytest.raises(ValueError, match="no example"):
        tokenize_dataset(dataset.select([1]), bpe_tokenizer, max_length=n_prompt)
    with pytest.raises(ValueError, match="'completion'"):
        tokenize_dataset(dataset.remove_columns("completion"), bpe_tokenizer)


def test_a_few_sft_steps_lower_the_loss(tmp_path: Path, bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    model = build_model(TINY, bpe_tokenizer, seed=0)
    result = train_sft(
        model,
        bpe_tokenizer,
        copy_task(32),
        eval_dataset=copy_task(8, seed=1),
        output_dir=str(tmp_path / "sft"),
        max_steps=30,
        learning_rate=1e-2,
        batch_size=8,
        logging_steps=5,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
    )
    assert result["steps"] == 30
    assert result["first_train_loss"] > 5.0  # ~ln(600) at initialisation
    assert result["train_loss"] < 0.6 * result["first_train_loss"]
    assert result["eval_loss"] < 0.6 * result["first_train_loss"]
    assert not model.training
    assert not list((tmp_path / "sft").glob("checkpoint-*"))  # save_strategy="no" by default
