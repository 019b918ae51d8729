"""Small builders shared by tests: tiny Llama models and a tiny running-sum dataset."""

from __future__ import annotations

import random

import datasets
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(tokenizer, hidden: int = 32, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def cumsum_rows(n: int, seed: int = 0, min_len: int = 3, max_len: int = 6) -> list[dict]:
    """Rows of the running-sum-mod-10 task: prompt 'cumsum: 3 5 2\\n=' and completion ' 3 8 0'."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        digits = [rng.randint(0, 9) for _ in range(rng.randint(min_len, max_len))]
        sums, total = [], 0
        for d in digits:
            total = (total + d) % 10
            sums.append(total)
        rows.append({"id": f"row-{i}", "prompt": "cumsum: " + " ".join(map(str, digits)) + "\n=",
                     "prompt_messages": [], "completion": " " + " ".join(map(str, sums))})
    return rows


def cumsum_dataset(n: int, seed: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_list(cumsum_rows(n, seed))


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def quick_sft(model, tokenizer, rows: list[dict], steps: int = 150, lr: float = 3e-3, batch_size: int = 16,
              seed: int = 0) -> float:
    """A few hundred plain cross-entropy steps on completions (prompt masked): a teacher that knows the task."""
    from distill.data.collate import side_batch
    from distill.data.tokenize import encode_example

    encoded = [encode_example(tokenizer, r["prompt"], r["completion"]) for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        chosen = rng.sample(encoded, min(batch_size, len(encoded)))
        batch = side_batch([e.input_ids[: e.prompt_length] for e in chosen],
                           [e.input_ids[e.prompt_length:] for e in chosen], pad)
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    return float(loss.detach())
