"""The training objective of one micro-batch: the configured distillation loss (+ optional cross-entropy), and
the numbers worth logging about it.

Logits are shifted once here (position t predicts token t+1). Same tokenizer: the teacher reads the student's
ids and every divergence applies position by position (a teacher whose embedding matrix is padded past the
tokenizer is cut to the shared columns). Cross tokenizer: `uld`/`gold` over byte-span groups. Offline cache:
`sparse_forward_kl` against the cached top-k + tail bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from distill import losses
from distill.trainer.batch import DistillBatch
from distill.trainer.config import DistillConfig

_TOKEN_LOSSES = {
    "forward_kl": losses.forward_kl,
    "reverse_kl": losses.reverse_kl,
    "tvd": losses.tvd,
}


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; training stops before the optimiser step."""


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)  # detached parts, for logging
    top1_agreement: float | None = None
    topk_mass: float | None = None


def _token_objective(cfg: DistillConfig, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                     vocab_map, num_items) -> tuple[torch.Tensor, dict[str, float]]:
    common = {"temperature": cfg.loss_temperature, "chunk_size": cfg.loss_chunk_size, "num_items_in_batch": num_items}
    if cfg.method in _TOKEN_LOSSES:
        return _TOKEN_LOSSES[cfg.method](student, teacher, mask, **common), {}
    if cfg.method == "jsd":
        return losses.generalized_jsd(student, teacher, mask, beta=cfg.beta, **common), {}
    if cfg.method == "skew_kl":
        return losses.skew_kl(student, teacher, mask, alpha=cfg.alpha, **common), {}
    if cfg.method == "skew_reverse_kl":
        return losses.skew_reverse_kl(student, teacher, mask, alpha=cfg.alpha, **common), {}
    return _cross_objective(cfg, student, teacher, mask, vocab_map, None, num_items)


def _cross_objective(cfg, student, teacher, mask, vocab_map, alignment, num_items
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    common = {"temperature": cfg.loss_temperature, "chunk_size": cfg.loss_chunk_size, "merge": cfg.merge,
              "alignment": alignment, "num_items_in_batch": num_items}
    if cfg.method == "uld":
        return losses.uld(student, teacher, mask, **common), {}
    out = losses.gold(student, teacher, mask, vocab_map, beta=cfg.beta, matched_weight=cfg.gold_matched_weight,
                      unmatched_weight=cfg.gold_unmatched_weight, **common)
    return out.loss, {"gold_matched": float(out.matched), "gold_unmatched": float(out.unmatched)}


def compute_objective(cfg: DistillConfig, student_logits: torch.Tensor, batch: DistillBatch, *,
                      teacher_logits: torch.Tensor | None = None, cached=None, vocab_map=None,
                      step: int = 0, num_items: float | None = None, measure: bool = True) -> ObjectiveOutput:
    """Loss of one micro-batch. `student_logits [B, L, Vs]` as the model returns them (position t predicts token
    t+1; scored where `batch.student.target_mask`); the teacher signal is either `teacher_logits [B, Lt, Vt]`
    (online) or `cached = (topk_ids, topk_logprobs)` `[B, L, k]` (offline).
    `num_items`: divide the summed loss by this instead of this batch's unit count (DDP: the mean count per
    process, so that averaging gradients over processes gives the mean over all units). `measure`: compute the
    logging-only numbers (top-1 agreement, top-k mass)."""
    s_logits = student_logits
    mask = batch.student.target_mask
    targets = batch.student.targets
    terms: dict[str, float] = {}
    agreement = topk_mass = None
    if cached is not None:
        ids, logprobs = cached
        loss = losses.sparse_forward_kl(s_logits, ids, logprobs, mask, temperature=cfg.loss_temperature,
                                        chunk_size=cfg.loss_chunk_size, num_items_in_batch=num_items)
        if measure and mask.any():
            topk_mass = float(torch.logsumexp(logprobs[mask].float(), -1).exp().mean())
            agreement = _agreement(s_logits.argmax(-1), ids[..., 0], mask)
    elif batch.alignment is None:
        t_logits = teacher_logits
        vocab = min(s_logits.shape[-1], t_logits.shape[-1])  # a padded embedding matrix on one side: cut it
        s_cut = s_logits if s_logits.shape[-1] == vocab else s_logits[..., :vocab]
        t_cut = t_logits if t_logits.shape[-1] == vocab else t_logits[..., :vocab]
        loss, terms = _token_objective(cfg, s_cut, t_cut, mask, vocab_map, num_items)
        agreement = _agreement(s_cut.argmax(-1), t_cut.argmax(-1), mask) if measure else None
    else:
        t_logits = teacher_logits
        group_mask = batch.alignment.student_group >= 0
        loss, terms = _cross_objective(cfg, s_logits, t_logits, group_mask, vocab_map, batch.alignment, num_items)
        agreement = _cross_agreement(s_logits, t_logits, batch, vocab_map) if measure else None
    terms[f"{cfg.method}_loss"] = float(loss.detach())
    if cfg.sft_weight > 0:
        ce_sum = F.cross_entropy(s_logits[mask].float(), targets[mask], reduction="sum")
        ce = ce_sum / (num_items or max(int(mask.sum()), 1))
        terms["sft_loss"] = float(ce.detach())
        loss = loss + cfg.sft_weight * ce
    for name, value in {**terms, "loss": float(loss.detach())}.items():
        if not torch.isfinite(torch.tensor(value)):
            raise NonFiniteLossError(
                f"step {step}: loss term {name!r} is {value} ({batch.source} batch, rows {batch.row_ids[:4]}...); "
                "stopped before the optimiser step, the last checkpoint is intact"
            )
    return ObjectiveOutput(loss, terms, agreement, topk_mass)


def _agreement(student_top1: torch.Tensor, teacher_top1: torch.Tensor, mask: torch.Tensor) -> float | None:
    if not mask.any():
        return None
    return float((student_top1 == teacher_top1)[mask].float().mean())


def _cross_agreement(s_logits, t_logits, batch: DistillBatch, vocab_map) -> float | None:
    """Top-1 agreement on span groups that are one token on each side, through the vocabulary map."""
    if vocab_map is None:
        return None
    alignment = batch.alignment
    hits, total = 0, 0
    s_to_t = torch.full((s_logits.shape[-1],), -1, dtype=torch.long, device=s_logits.device)
    s_to_t[vocab_map.student_ids.to(s_logits.device)] = vocab_map.teacher_ids.to(s_logits.device)
    for b in range(s_logits.shape[0]):
        s_group, t_group = alignment.student_group[b], alignment.teacher_group[b]
        n = int(s_group.max()) + 1
        if n <= 0:
            continue
        s_count = torch.bincount(s_group[s_group >= 0], minlength=n)
        t_count = torch.bincount(t_group[t_group >= 0], minlength=n)
        single = (s_count == 1) & (t_count == 1)
        s_pos = torch.nonzero((s_group >= 0) & single[s_group.clamp(min=0)]).squeeze(-1)
        t_pos = torch.nonzero((t_group >= 0) & single[t_group.clamp(min=0)]).squeeze(-1)
        if s_pos.numel():
            mapped = s_to_t[s_logits[b, s_pos].argmax(-1)]
            hits += int((mapped == t_logits[b, t_pos].argmax(-1)).sum())
            total += s_pos.numel()
    return hits / total if total else None
