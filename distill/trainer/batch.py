"""From raw rows to the tensors one distillation micro-batch needs, for the student and (if different) the teacher.

A row has `prompt` (str), `prompt_messages` (chat turns; when non-empty they are the prompt) and `completion`.
The completion of a micro-batch comes from one of three sources:

- off-policy: the row's reference completion;
- on-policy: the student's own sampled rollout (exposure bias is trained away on the student's own prefixes);
- sequence-level KD (`seq_kd`): the teacher's rollout.

Each side tokenises its *own* rendering of the prompt (chat template of that tokenizer) and the completion *text*
separately; generated ids are turned back into text byte-exactly (`TokenBytes`, as a continuation of the prompt),
never by feeding one tokenizer's ids or special tokens to the other. Sequences are right-padded; `labels` are
-100 on prompt and padding. The cross-tokenizer `alignment` groups completion tokens of both sides by byte spans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.align import AlignedGroups, SpanAlignment, align_spans
from distill.align.spans import token_bytes
from distill.data.collate import SideBatch, prompt_of, side_batch
from distill.data.tokenize import encode_completion, encode_prompt
from distill.rollout import generate


@dataclass
class DistillBatch:
    student: SideBatch
    teacher: SideBatch | None  # None: the teacher reads the student's ids (same tokenizer)
    alignment: AlignedGroups | None  # cross-tokenizer span groups over logits positions (t predicts t + 1)
    source: str  # "off_policy" | "on_policy" | "seq_kd"
    row_ids: list[str]

    @property
    def num_units(self) -> int:
        """Scored units: target tokens (same tokenizer) or span groups with tokens on both sides."""
        if self.alignment is None:
            return self.student.num_targets
        return int((self.alignment.student_group.max(dim=1).values + 1).clamp(min=0).sum())

    def last(self, student_positions: int, teacher_positions: int) -> DistillBatch:
        """The batch seen through logits of the last positions only (`SideBatch.last` on each side; the alignment
        cropped alike). Scores the same units as long as the kept positions hold all scored ones."""
        alignment = self.alignment
        if alignment is not None:
            s_cut = alignment.student_group.shape[1] - student_positions
            t_cut = alignment.teacher_group.shape[1] - teacher_positions
            alignment = AlignedGroups(alignment.student_group[:, s_cut:], alignment.teacher_group[:, t_cut:],
                                      alignment.student_ids[:, s_cut:], alignment.teacher_ids[:, t_cut:])
        teacher = self.teacher.last(teacher_positions) if self.teacher is not None else None
        return DistillBatch(self.student.last(student_positions), teacher, alignment, self.source, self.row_ids)

    def to(self, device) -> DistillBatch:
        alignment = self.alignment
        if alignment is not None:
            alignment = AlignedGroups(*(t.to(device) for t in (alignment.student_group, alignment.teacher_group,
                                                                alignment.student_ids, alignment.teacher_ids)))
        teacher = self.teacher.to(device) if self.teacher is not None else None
        return DistillBatch(self.student.to(device), teacher, alignment, self.source, self.row_ids)


def _unscored(student_len: int, teacher_len: int) -> SpanAlignment:
    """Each side in a group of its own: no group has both sides, so nothing of this sample is scored."""
    return SpanAlignment(np.zeros(student_len, dtype=np.int64), np.ones(teacher_len, dtype=np.int64), 2)


class BatchBuilder:
    """Builds `DistillBatch`es; holds the tokenizers and the generation settings."""

    def __init__(self, student_tokenizer, teacher_tokenizer, *, same_tokenizer: bool, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> None:
        self.student_tok, self.teacher_tok = student_tokenizer, teacher_tokenizer
        self.same_tokenizer = same_tokenizer
        self.generation = {"max_new_tokens": max_new_tokens, "do_sample": True, "temperature": temperature,
                           "top_p": top_p, "top_k": top_k}

    @staticmethod
    def _pad_id(tokenizer) -> int:
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _rollout(self, model, tokenizer, prompts: list[list[int]]) -> tuple[list[list[int]], list[str], list[bool]]:
        """Sampled completions: their ids (EOS kept), their text (byte-exact continuation decode) and whether each
        ended with EOS."""
        out = generate(model, prompts, eos_token_id=tokenizer.eos_token_id, pad_token_id=self._pad_id(tokenizer),
                       **self.generation)
        table = token_bytes(tokenizer)
        return out.completions, [table.decode(c, continuation=True) for c in out.completions], out.finished

    def _align(self, student_ids: list[int], teacher_ids: list[int]) -> SpanAlignment:
        """Byte-span groups of two completions; an empty side (a rollout of special tokens only) scores nothing."""
        if not student_ids or not teacher_ids:
            return _unscored(len(student_ids), len(teacher_ids))
        try:
            return align_spans(student_ids, teacher_ids, self.student_tok, self.teacher_tok, continuation=True)
        except ValueError:  # a rollout of invalid byte sequences the teacher cannot read back: not scored
            return _unscored(len(student_ids), len(teacher_ids))

    def build(self, rows: list[dict], *, source: str = "off_policy", student_model=None, teacher_model=None
              ) -> DistillBatch:
        prompts = [prompt_of(r) for r in rows]
        s_prompts = [encode_prompt(self.student_tok, p) for p in prompts]
        t_prompts = s_prompts if self.same_tokenizer else [encode_prompt(self.teacher_tok, p) for p in prompts]
        sampled = None  # the student's own sampled ids: it trains on exactly what it generated
        if source == "on_policy":
            sampled, texts, finished = self._rollout(student_model, self.student_tok, s_prompts)
        elif source == "seq_kd":
            _, texts, finished = self._rollout(teacher_model, self.teacher_tok, t_prompts)
        elif source == "off_policy":
            texts, finished = [r["completion"] for r in rows], [True] * len(rows)
        else:
            raise ValueError(f"unknown batch source {source!r}")
        ends = list(zip(texts, finished, strict=True))
        s_completions = sampled or [encode_completion(self.student_tok, text, add_eos=done) for text, done in ends]
        student = side_batch(s_prompts, s_completions, self._pad_id(self.student_tok))
        row_ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
        if self.same_tokenizer:
            return DistillBatch(student, None, None, source, row_ids)
        t_completions = [encode_completion(self.teacher_tok, text, add_eos=done) for text, done in ends]
        teacher = side_batch(t_prompts, t_completions, self._pad_id(self.teacher_tok))
        alignments = [self._align(s, t) for s, t in zip(s_completions, t_completions, strict=True)]
        alignment = AlignedGroups.from_alignments(
            alignments, student.targets, teacher.targets,
            [n - 1 for n in student.prompt_lengths], [n - 1 for n in teacher.prompt_lengths],
        )
        return DistillBatch(student, teacher, alignment, source, row_ids)
