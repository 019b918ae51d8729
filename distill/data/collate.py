"""Padding tokenised (prompt, completion) pairs into one model's batch tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from distill.data.tokenize import IGNORE_INDEX


@dataclass
class SideBatch:
    """One model's view of a micro-batch: `input_ids`, `attention_mask`, `labels`, all `[B, L]`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_lengths: list[int]

    def to(self, device) -> SideBatch:
        return SideBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                         self.prompt_lengths)

    def last(self, n: int) -> SideBatch:
        """The last `n` positions (`[B, n]`; `targets`/`target_mask` as at those positions of the whole batch):
        the view matching logits computed for the last `n` positions only."""
        cut = self.input_ids.shape[1] - n
        return SideBatch(self.input_ids[:, cut:], self.attention_mask[:, cut:], self.labels[:, cut:],
                         [p - cut for p in self.prompt_lengths])

    def scored_tail(self) -> int:
        """How many trailing positions hold every scored position (at least 1): from the first column any row
        scores to the end."""
        columns = self.target_mask.any(0).nonzero()
        return self.input_ids.shape[1] - int(columns[0]) if columns.numel() else 1

    @property
    def target_mask(self) -> torch.Tensor:
        """`[B, L]`: positions t whose logits are scored, i.e. whose next token t+1 is a completion token. The
        logits need no shift (a shifted view of `[B, L, V]` logits would be copied)."""
        return nn.functional.pad(self.labels[:, 1:] != IGNORE_INDEX, (0, 1), value=False)

    @property
    def targets(self) -> torch.Tensor:
        """`[B, L]`: the token each position predicts (`input_ids` shifted left; the last position pads)."""
        return nn.functional.pad(self.input_ids[:, 1:], (0, 1), value=0)

    @property
    def num_targets(self) -> int:
        return int(self.target_mask.sum())


def prompt_of(row: dict) -> str | list[dict]:
    return row.get("prompt_messages") or row["prompt"]


def side_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> SideBatch:
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[i, : len(p) + len(c)] = 1
        if c:
            labels[i, len(p) : len(p) + len(c)] = torch.tensor(c, dtype=torch.long)
    return SideBatch(ids, mask, labels, [len(p) for p in prompts])
