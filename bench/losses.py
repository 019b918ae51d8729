"""Speed and memory of `distill.losses.uld`/`gold` against TRL's `ULDLoss`, on the same inputs, in one run.

Inputs (defaults from issue #2): B=8 sequences of T=256 completion tokens on each side, Vs=32k, Vt=50k, CPU.
The two tokenizations cut the same ~1.1 kB text: they share word boundaries (as real tokenizers do) and add
their own sub-word cuts, so most span groups are 1:1 and some merge 2-3 tokens. Both implementations use the
"bayesian" (chain rule) merge and byte-offset alignment; TRL aligns inside its loss, ours gets the alignment
from `distill.align` (the time of building it is reported separately and included in our totals).

Printed: forward+backward seconds (median of --repeats) of each, the ratio, the largest difference of the
loss values where the definitions coincide (ULD; GOLD's unmatched ULD term), and the peak extra memory of our
loss at two sequence lengths, measured in fresh subprocesses from the peak resident set size.

Run: `python bench/losses.py` (about 4 minutes on 2 cores), or `--quick` for a smaller smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore")

from distill import losses  # noqa: E402
from distill.align import AlignedGroups, SpanAlignment, merge_span_log_probs  # noqa: E402
from distill.cpu_memory import keep_freed_memory  # noqa: E402
from distill.losses.engine import resolve_chunk_size  # noqa: E402


@dataclass
class Case:
    student_logits: torch.Tensor  # [B, 1 + T, Vs]: position 0 is the prompt's last position
    teacher_logits: torch.Tensor  # [B, 1 + T, Vt]
    student_ids: torch.Tensor  # [B, 1 + T] input ids; completion tokens at 1..T
    teacher_ids: torch.Tensor
    student_offsets: torch.Tensor  # [B, 1 + T, 2] completion-relative byte offsets, (0, 0) on the prompt
    teacher_offsets: torch.Tensor


def _token_ends(rng: np.random.Generator, words: np.ndarray, text_bytes: int, tokens: int) -> np.ndarray:
    """Token end offsets: every word boundary plus random sub-word cuts, `tokens` in all."""
    candidates = np.setdiff1d(np.arange(1, text_bytes), words)
    extra = rng.choice(candidates, size=tokens - 1 - len(words), replace=False)
    return np.sort(np.concatenate([words, extra, [text_bytes]]))


def make_case(batch: int, length: int, vs: int, vt: int, seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    text_bytes = int(length * 4.3)
    s_off, t_off = [], []
    for _ in range(batch):
        words = np.sort(rng.choice(np.arange(1, text_bytes), size=int(length * 0.7), replace=False))
        for out in (s_off, t_off):
            ends = _token_ends(rng, words, text_bytes, length)
            starts = np.concatenate([[0], ends[:-1]])
            out.append(np.stack([np.concatenate([[0], starts]), np.concatenate([[0], ends])], -1))
    return Case(
        student_logits=torch.randn(batch, length + 1, vs, generator=g),
        teacher_logits=torch.randn(batch, length + 1, vt, generator=g),
        student_ids=torch.randint(0, vs, (batch, length + 1), generator=g),
        teacher_ids=torch.randint(0, vt, (batch, length + 1), generator=g),
        student_offsets=torch.as_tensor(np.stack(s_off)),
        teacher_offsets=torch.as_tensor(np.stack(t_off)),
    )


def span_alignment_from_offsets(s_ends: np.ndarray, t_ends: np.ndarray) -> SpanAlignment:
    """Groups from token end offsets (what `align_spans` computes from tokenizers), vectorised."""
    cuts = np.intersect1d(s_ends, t_ends)
    s_group, t_group = np.searchsorted(cuts, s_ends), np.searchsorted(cuts, t_ends)
    return SpanAlignment(s_group, t_group, len(cuts))


def our_alignment(case: Case) -> AlignedGroups:
    """Our inputs: logits aligned with targets (position t-1 predicts completion token t) and span groups."""
    alignments = [
        span_alignment_from_offsets(case.student_offsets[b, 1:, 1].numpy(), case.teacher_offsets[b, 1:, 1].numpy())
        for b in range(case.student_ids.shape[0])
    ]
    return AlignedGroups.from_alignments(alignments, case.student_ids[:, 1:], case.teacher_ids[:, 1:])


class MatchedIds:
    """A vocabulary map given by id lists (a `VocabMap` is built from tokenizers; here ids are synthetic)."""

    def __init__(self, student_ids: torch.Tensor, teacher_ids: torch.Tensor):
        self.student_ids, self.teacher_ids = student_ids, teacher_ids
        self.num_matched = int(student_ids.numel())


class FakeVocabTokenizer:
    """Only what TRL's hybrid mapping reads: `get_vocab()`."""

    def __init__(self, vocab: dict[str, int]):
        self._vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return self._vocab


def vocabularies(vs: int, vt: int, matched: int, seed: int = 1):
    """Two vocabularies sharing `matched` token strings at scattered ids."""
    rng = np.random.default_rng(seed)
    s_shared = rng.choice(vs, size=matched, replace=False)
    t_shared = rng.choice(vt, size=matched, replace=False)
    s_vocab = {f"s{i}": i for i in range(vs)}
    t_vocab = {f"t{i}": i for i in range(vt)}
    for k, (si, ti) in enumerate(zip(s_shared, t_shared, strict=True)):
        s_vocab.pop(f"s{si}")
        t_vocab.pop(f"t{ti}")
        s_vocab[f"shared{k}"] = int(si)
        t_vocab[f"shared{k}"] = int(ti)
    order = np.argsort(t_shared)
    ids = MatchedIds(torch.as_tensor(s_shared[order]), torch.as_tensor(t_shared[order]))
    return FakeVocabTokenizer(s_vocab), FakeVocabTokenizer(t_vocab), ids


def trl_loss(case: Case, hybrid: bool, tokenizers=None):
    from trl.experimental.gold.gold_config import GOLDConfig
    from trl.experimental.gold.gold_trainer import ULDLoss

    config = GOLDConfig(
        output_dir="/tmp/bench_trl", report_to=[], use_cpu=True, bf16=False, use_uld_loss=True,
        use_extended_uld=True, uld_token_merge_strategy="bayesian", uld_skip_student_eos=False,
        uld_skip_teacher_eos=False, uld_use_hybrid_loss=hybrid, beta=0.5,
    )
    student_tok, teacher_tok = tokenizers if tokenizers else (None, None)
    loss = ULDLoss(config, student_tokenizer=student_tok, teacher_tokenizer=teacher_tok)
    labels_s = case.student_ids.clone()
    labels_s[:, 0] = -100
    labels_t = case.teacher_ids.clone()
    labels_t[:, 0] = -100

    def run(student_logits):
        return loss(student_logits, case.teacher_logits, labels_s, labels_t, case.student_ids, case.teacher_ids,
                    case.student_offsets, case.teacher_offsets)

    return loss, run


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median seconds of forward+backward, and the last loss value."""
    times, value = [], float("nan")
    for _ in range(repeats):
        logits = fn.logits.detach().clone().requires_grad_(True)
        start = time.perf_counter()
        loss = fn(logits)
        loss.backward()
        times.append(time.perf_counter() - start)
        value = float(loss)
    return statistics.median(times), value


class Runner:
    def __init__(self, logits, call):
        self.logits, self.call = logits, call

    def __call__(self, logits):
        return self.call(logits)


def per_sample_mean(per_group: torch.Tensor, groups: AlignedGroups) -> torch.Tensor:
    """TRL's reduction: mean over each sample's groups, then over samples (ours pools all groups)."""
    counts = (per_group != 0).sum(-1).clamp(min=1)
    return (per_group.sum(-1) / counts).mean()


def unmatched_check(case: Case, groups: AlignedGroups, vmap: MatchedIds, trl) -> float:
    """|our unmatched ULD term − TRL's| on sample 0, both fed the same merged rows."""
    sample = 0
    s_logits = case.student_logits[sample, :-1]
    t_logits = case.teacher_logits[sample, :-1]
    s_group, t_group = groups.student_group[sample], groups.teacher_group[sample]
    s_rows = merge_span_log_probs(s_logits.log_softmax(-1), groups.student_ids[sample], s_group, "bayesian")
    t_rows = merge_span_log_probs(t_logits.log_softmax(-1), groups.teacher_ids[sample], t_group, "bayesian")
    trl._compute_hybrid_uld_loss(s_rows.exp(), t_rows.exp())
    theirs = float(trl.last_unmatched_loss)
    ours = losses.gold(
        case.student_logits[sample : sample + 1, :-1], case.teacher_logits[sample : sample + 1, :-1],
        groups.student_group[sample : sample + 1] >= 0, vmap,
        alignment=AlignedGroups(s_group[None], t_group[None], groups.student_ids[sample : sample + 1],
                                groups.teacher_ids[sample : sample + 1]),
    ).unmatched
    return abs(float(ours) - theirs)


MEMORY_CHILD = r"""
import json, sys, torch
from distill import losses
from distill.align import AlignedGroups
B, T, V, chunk, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
torch.manual_seed(0)
def run(student, teacher, mask, groups):
    if mode == "ours":
        return losses.uld(student, teacher, mask, alignment=groups, chunk_size=chunk or None)
    ps = student.softmax(-1).sort(-1, descending=True).values  # plain autograd over the whole batch
    pt = teacher.softmax(-1).sort(-1, descending=True).values
    return (ps - pt[..., :V]).abs().sum(-1).mean() + pt[..., V:].sum(-1).mean()
warm = torch.randn(1, 4, V, requires_grad=True)  # first calls start thread pools and autograd workers
warm_ids = torch.zeros(1, 4, dtype=torch.long)
run(warm, torch.randn(1, 4, int(V * 1.5)), torch.ones(1, 4, dtype=torch.bool),
    AlignedGroups.positional(torch.ones(1, 4, dtype=torch.bool), warm_ids, warm_ids)).backward()
student = torch.randn(B, T, V, requires_grad=True)
teacher = torch.randn(B, T, int(V * 1.5))
ids = torch.randint(0, V, (B, T))
mask = torch.ones(B, T, dtype=torch.bool)
groups = AlignedGroups.positional(mask, ids, ids)
open("/proc/self/clear_refs", "w").write("5")
base, _ = rss()
run(student, teacher, mask, groups).backward()
_, peak = rss()
grad_bytes = student.grad.numel() * student.grad.element_size()
print(json.dumps({"extra": peak - base - grad_bytes, "grad": grad_bytes}))
"""


def memory(batch: int, length: int, vocab: int, chunk: int, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(batch), str(length), str(vocab), str(chunk), mode],
        capture_output=True, text=True, check=True,
        # large blocks straight from mmap, so freed chunk temporaries leave the resident set (no heap caching)
        env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--student-vocab", type=int, default=32_000)
    parser.add_argument("--teacher-vocab", type=int, default=50_000)
    parser.add_argument("--matched", type=int, default=20_000, help="token strings shared by the vocabularies")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls of each loss; the median is reported (the machine is shared)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke run)")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="'keep': glibc keeps freed memory for reuse (distill.cpu_memory, as DistillTrainer sets "
                             "it on the CPU), for both losses; 'default': glibc's own policy")
    args = parser.parse_args()
    kept = args.malloc == "keep" and keep_freed_memory()
    if args.quick:
        args.batch, args.length, args.student_vocab, args.teacher_vocab, args.matched, args.repeats = (
            2, 64, 4000, 6000, 2500, 1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, B={args.batch} T={args.length} "
          f"Vs={args.student_vocab} Vt={args.teacher_vocab} matched={args.matched}")
    print("allocator: " + ("glibc keeps freed memory (distill.cpu_memory), for both" if kept else "glibc default"))
    case = make_case(args.batch, args.length, args.student_vocab, args.teacher_vocab)
    start = time.perf_counter()
    groups = our_alignment(case)
    align_s = time.perf_counter() - start
    n_groups = int((groups.student_group.max(-1).values + 1).sum())
    print(f"span groups: {n_groups} for {args.batch * args.length} student tokens; building them: {align_s:.3f}s")
    student_tok, teacher_tok, vmap = vocabularies(args.student_vocab, args.teacher_vocab, args.matched)
    mask = groups.student_group >= 0
    teacher = case.teacher_logits[:, :-1]

    def ours_uld(logits):
        per = losses.uld(logits[:, :-1], teacher, mask, alignment=groups, reduction="none")
        return per_sample_mean(per, groups)

    def ours_gold(logits):
        per = losses.gold(logits[:, :-1], teacher, mask, vmap, alignment=groups, reduction="none").loss
        return per_sample_mean(per, groups)

    rows = []
    for name, ours_fn, hybrid in (("uld", ours_uld, False), ("gold", ours_gold, True)):
        trl, trl_call = trl_loss(case, hybrid, (student_tok, teacher_tok) if hybrid else None)
        t_ours, v_ours = timed(Runner(case.student_logits, ours_fn), args.repeats)
        t_ours += align_s
        t_trl, v_trl = timed(Runner(case.student_logits, trl_call), args.repeats)
        if hybrid:
            diff = unmatched_check(case, groups, vmap, trl)
            what = "unmatched ULD term (sample 0)"
        else:
            diff = abs(v_ours - v_trl)
            what = "loss value"
        rows.append((name, t_trl, t_ours, diff, what))
        print(f"{name}: TRL {t_trl:.3f}s  ours {t_ours:.3f}s  speed-up {t_trl / t_ours:.2f}x  "
              f"max |diff| of {what}: {diff:.2e}  (ours {v_ours:.6f}, TRL {v_trl:.6f})")
    length_a, length_b = (args.length, 4 * args.length)
    vocab = args.student_vocab
    print(f"peak extra memory of uld beyond logits and their gradient (B=2, Vs={vocab}, Vt={int(vocab * 1.5)}, "
          f"chunk {resolve_chunk_size(None, vocab, int(vocab * 1.5))} rows):")
    for length in (length_a, length_b):
        ours = memory(2, length, vocab, 0, "ours")
        plain = memory(2, length, vocab, 0, "plain")
        print(f"  T={length}: ours {ours['extra'] / 2**20:.1f} MiB, plain autograd {plain['extra'] / 2**20:.1f} MiB "
              f"(gradient itself {ours['grad'] / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
