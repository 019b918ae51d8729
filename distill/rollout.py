"""Batched generation from prompt ids: the student's on-policy rollouts, and evaluation's generations.

Prompts are left-padded so every row's last prompt token sits at the same position, generated in one
`model.generate` call with the KV cache on, and cut at the first EOS. Returns ids only; callers decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollouts:
    """`completions[i]` are the ids generated after prompt i, without padding, cut after the first EOS (kept)."""

    completions: list[list[int]]
    finished: list[bool]  # ended with EOS (not cut by max_new_tokens)
    new_tokens: int  # tokens generated in all (for tokens/s)


def left_pad(rows: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, L]` ids and attention mask, rows right-aligned."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    *,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int | None = None,
) -> Rollouts:
    """Generate a completion for each prompt (ids), `batch_size` prompts per `generate` call (all by default)."""
    if not prompts:
        return Rollouts([], [], 0)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos_ids = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or [])
    step = batch_size or len(prompts)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k} if do_sample else {
        "do_sample": False
    }
    completions, finished, new_tokens = [], [], 0
    try:
        for start in range(0, len(prompts), step):
            ids, mask = left_pad(prompts[start : start + step], pad_token_id, device)
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, use_cache=True,
                eos_token_id=sorted(eos_ids) or None, pad_token_id=pad_token_id, **sampling,
            )
            for row in out[:, ids.shape[1]:].tolist():
                cut = next((i for i, t in enumerate(row) if t in eos_ids), None)
                completions.append(row if cut is None else row[: cut + 1])
                finished.append(cut is not None)
                new_tokens += len(completions[-1])
    finally:
        model.train(was_training)
    return Rollouts(completions, finished, new_tokens)
