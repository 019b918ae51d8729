"""Evaluate one model on a prompt/completion dataset: generation quality, perplexity, size, teacher agreement.

`evaluate_model` greedy-generates a completion for every prompt (`distill.rollout.generate`), then scores:

- `exact_match`: share of generations the task's `check(prompt, completion)` accepts;
- `accuracy_by_length`: the same per `answer_length` (or, without that column, per reference completion length
  in characters; `length_key` says which);
- `perplexity`, `mean_nll`: the model on the *reference* completions, teacher-forced, prompt tokens masked
  (prompt and completion tokenised separately, EOS scored), pooled over tokens;
- `distinct_1`, `distinct_2`: of the generated texts, split on whitespace (words, so models with different
  tokenizers are comparable);
- `tokens_per_second` (generated tokens / wall time of generation), `num_parameters`, `param_bytes` and
  `size_on_disk_bytes` (the safetensors files in `model_dir`, when given);
- with a `teacher`: teacher–student forward KL, top-1 agreement and tail coverage, teacher-forced on the
  student's *own* generations (see `distill.evaluation.compare` for both the same-tokenizer and the
  cross-tokenizer definitions). Cross-tokenizer: the generated text is re-tokenised by the teacher (its own
  prompt template too); a generation whose text cannot be byte-aligned with its ids (e.g. stray invalid UTF-8
  bytes) is skipped and counted in `teacher_skipped`; `teacher_vocab_overlap` is the share of the teacher's
  vocabulary with a same-text student token (1.0 for one tokenizer): the part the matched-vocabulary numbers see.

The result is one flat JSON-able dict with `"schema": 1`; teacher keys are None when there is no teacher.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from distill.align import VocabMap, align_spans
from distill.data.tokenize import IGNORE_INDEX, encode_completion, encode_example, encode_prompt
from distill.evaluation.compare import UnitStats, cross_vocab_units, same_vocab_units
from distill.evaluation.metrics import load_metric
from distill.rollout import generate

SCHEMA_VERSION = 1
Checker = Callable[[str, str], bool]


def _rows(dataset, limit: int | None) -> list[dict]:
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    rows = [dict(dataset[i]) for i in range(n)]
    if not rows:
        raise ValueError("evaluate_model: the dataset (after `limit`) has no rows")
    for i, row in enumerate(rows):
        for column in ("prompt", "completion"):
            if not isinstance(row.get(column), str):
                raise ValueError(f"evaluate_model: row {i} (id {row.get('id')!r}): column {column!r} must be a string")
    return rows


def _prompt(row: dict) -> str | list[dict]:
    """The chat messages when the row has any, else the plain prompt."""
    return row.get("prompt_messages") or row["prompt"]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pad is None else int(pad)


@torch.no_grad()
def completion_logits(model, sequences: Sequence[tuple[list[int], int]], batch_size: int) -> Iterator[torch.Tensor]:
    """For each `(ids, prompt_length)`, the `[len(ids) - prompt_length, V]` logits that predicted `ids[prompt_length:]`.

    Sequences are right-padded into batches of `batch_size` (attention-masked), one forward pass per batch.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (ids, _) in enumerate(batch):
                input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[b, : len(ids)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            for b, (ids, prompt_length) in enumerate(batch):
                if prompt_length < 1:
                    raise ValueError("completion_logits: every sequence needs at least one prompt token")
                yield logits[b, prompt_length - 1 : len(ids) - 1]
    finally:
        model.train(was_training)


def reference_nll(model, tokenizer, rows: list[dict], batch_size: int) -> tuple[list[float], list[int]]:
    """Summed NLL (nats) and scored-token count of each row's reference completion (+ EOS), prompt masked."""
    encoded = [encode_example(tokenizer, _prompt(row), row["completion"]) for row in rows]
    sequences = [(e.input_ids, e.prompt_length) for e in encoded]
    nll, counts = [], []
    for e, logits in zip(encoded, completion_logits(model, sequences, batch_size), strict=True):
        targets = torch.tensor(e.labels[e.prompt_length :], dtype=torch.long, device=logits.device)
        scored = targets != IGNORE_INDEX
        loss = torch.nn.functional.cross_entropy(logits.double()[scored], targets[scored], reduction="sum")
        nll.append(float(loss))
        counts.append(int(scored.sum()))
    return nll, counts


def same_tokenizer(a, b) -> bool:
    """Whether token ids mean the same text for both tokenizers (the same object, or the same vocabulary)."""
    return b is None or a is b or a.get_vocab() == b.get_vocab()


def compare_with_teacher(
    model,
    tokenizer,
    teacher,
    teacher_tokenizer,
    rows: list[dict],
    completions: list[list[int]],
    texts: list[str],
    finished: list[bool],
    batch_size: int,
) -> tuple[UnitStats, str, int, float]:
    """Teacher-forced comparison on the student's generations → (per-unit stats, comparison kind, skipped rows,
    share of the teacher's vocabulary with a same-text student token)."""
    student_prompts = [encode_prompt(tokenizer, _prompt(row)) for row in rows]
    same = same_tokenizer(tokenizer, teacher_tokenizer)
    t_tok = tokenizer if teacher_tokenizer is None else teacher_tokenizer
    teacher_prompts = student_prompts if t_tok is tokenizer else [encode_prompt(t_tok, _prompt(r)) for r in rows]
    if same:
        t_completions = completions
    else:
        t_completions = [
            encode_completion(t_tok, text, add_eos=done) for text, done in zip(texts, finished, strict=True)
        ]
    vocab_map = None if same else VocabMap(tokenizer, t_tok)
    stats, skipped = UnitStats(), 0
    keep = [i for i in range(len(rows)) if completions[i] and t_completions[i]]
    skipped += len(rows) - len(keep)
    s_seqs = [(student_prompts[i] + completions[i], len(student_prompts[i])) for i in keep]
    t_seqs = [(teacher_prompts[i] + t_completions[i], len(teacher_prompts[i])) for i in keep]
    s_iter = completion_logits(model, s_seqs, batch_size)
    t_iter = completion_logits(teacher, t_seqs, batch_size)
    for i, s_logits, t_logits in zip(keep, s_iter, t_iter, strict=True):
        if same:
            stats.extend(same_vocab_units(s_logits, t_logits))
            continue
        try:
            alignment = align_spans(completions[i], t_completions[i], tokenizer, t_tok)
        except ValueError:  # the generated ids do not decode to text the teacher's tokens can match
            skipped += 1
            continue
        stats.extend(cross_vocab_units(s_logits, t_logits, completions[i], t_completions[i], alignment, vocab_map))
    overlap = 1.0 if vocab_map is None else vocab_map.teacher_coverage
    return stats, ("same_tokenizer" if same else "span_groups_matched_vocab"), skipped, overlap


def _size_on_disk(model_dir: str | Path | None) -> int | None:
    if model_dir is None:
        return None
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"evaluate_model: no *.safetensors files in model_dir {str(model_dir)!r}")
    return sum(f.stat().st_size for f in files)


def evaluate_model(
    model,
    tokenizer,
    dataset,
    *,
    check: Checker,
    teacher=None,
    teacher_tokenizer=None,
    max_new_tokens: int,
    batch_size: int,
    limit: int | None = None,
    model_dir: str | Path | None = None,
) -> dict:
    """Evaluate `model` on `dataset` (rows with `prompt`, `completion`, optional `prompt_messages`,
    `answer_length`, `id`); see the module docstring for every key of the returned dict."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"evaluate_model: batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}"
        )
    rows = _rows(dataset, limit)
    prompts = [encode_prompt(tokenizer, _prompt(row)) for row in rows]
    started = time.perf_counter()
    rollouts = generate(
        model,
        prompts,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=_pad_id(tokenizer),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        batch_size=batch_size,
    )
    seconds = time.perf_counter() - started
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in rollouts.completions]
    correct = [bool(check(row["prompt"], text)) for row, text in zip(rows, texts, strict=True)]

    has_length = all(row.get("answer_length") is not None for row in rows)
    lengths = [int(row["answer_length"]) if has_length else len(row["completion"]) for row in rows]
    by_length = load_metric("accuracy_by_length").compute(correct=correct, lengths=lengths)
    nll, counts = reference_nll(model, tokenizer, rows, batch_size)
    perplexity = load_metric("perplexity_from_nll").compute(nll=nll, num_tokens=counts)
    distinct = load_metric("distinct_n").compute(predictions=texts, orders=(1, 2))
    params = {id(p): p for p in model.parameters()}.values()

    result = {
        "schema": SCHEMA_VERSION,
        "num_examples": len(rows),
        "exact_match": load_metric("exact_match").compute(predictions=correct, references=[True] * len(rows))[
            "exact_match"
        ],
        "accuracy_by_length": {str(k): v for k, v in by_length["by_length"].items()},
        "count_by_length": {str(k): v for k, v in by_length["counts"].items()},
        "length_key": "answer_length" if has_length else "completion_chars",
        "perplexity": perplexity["perplexity"],
        "mean_nll": perplexity["mean_nll"],
        "reference_tokens": perplexity["num_tokens"],
        "distinct_1": distinct["distinct_1"],
        "distinct_2": distinct["distinct_2"],
        "generated_tokens": rollouts.new_tokens,
        "generation_seconds": seconds,
        "tokens_per_second": rollouts.new_tokens / seconds if seconds > 0 else None,
        "finished_fraction": sum(rollouts.finished) / len(rows),
        "num_parameters": sum(p.numel() for p in params),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "size_on_disk_bytes": _size_on_disk(model_dir),
        **dict.fromkeys(TEACHER_KEYS),
    }
    if teacher is not None:
        stats, kind, skipped, overlap = compare_with_teacher(
            model,
            tokenizer,
            teacher,
            teacher_tokenizer,
            rows,
            rollouts.completions,
            texts,
            rollouts.finished,
            batch_size,
        )
        result.update(
            teacher_comparison=kind, teacher_units=len(stats), teacher_skipped=skipped, teacher_vocab_overlap=overlap
        )
        if len(stats):
            agreement = load_metric("teacher_agreement").compute(kl=stats.kl, top1_agree=stats.top1_agree)
            tail = load_metric("tail_coverage").compute(covered=stats.tail_covered, total=stats.tail_total)
            result.update(
                teacher_kl=agreement["mean_kl"],
                teacher_top1_agreement=agreement["top1_agreement"],
                teacher_tail_coverage=tail["tail_coverage"],
                teacher_tail_mass=tail["mean_tail_mass"],
            )
    return result


TEACHER_KEYS: tuple[str, ...] = (
    "teacher_comparison",
    "teacher_units",
    "teacher_skipped",
    "teacher_vocab_overlap",
    "teacher_kl",
    "teacher_top1_agreement",
    "teacher_tail_coverage",
    "teacher_tail_mass",
)
