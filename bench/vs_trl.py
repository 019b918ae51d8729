"""Training throughput of `DistillTrainer` (method="gold") against TRL's `GOLDTrainer`, in one run (issue #3).

Both trainers distil a tiny Llama teacher into a tiny Llama student across two *different* byte-level BPE
tokenizers (student 16k pieces, digits split one by one, trained on one half of the Python standard library;
teacher 24k pieces, GPT-2 style digit runs, trained on the other half), with the same data, batch size, steps,
λ, completion length, sampling temperature, learning rate and optimiser:

- TRL: `GOLDTrainer` with `use_uld_loss=True`, `use_extended_uld=True`, `uld_use_hybrid_loss=True`,
  `uld_token_merge_strategy="bayesian"` (adaptive hybrid weights, the default), `max_completion_length=N`.
- ours: `DistillTrainer` with `method="gold"`, `merge="bayesian"` (adaptive weights), `max_new_tokens=N`.

The on-policy micro-batches are the same steps in both runs: TRL draws them with the global `random` module inside
`_fill_buffer`, so we hand its module a stand-in whose draws reproduce our `LambdaSchedule`'s (seeded) pattern.
Steps are timed by a callback (`on_step_end`, the whole loop iteration: data, rollout, forward, backward,
optimiser), the first `--warmup` steps are excluded. Tokens/s = completion target tokens on the student side
(`labels != -100`, EOS included, counted identically for both) per second of the timed steps.

The *floor* of our step replays the shapes of each timed step of our run on fresh models: student forward +
backward (a log-sum-exp over the logits, so every logit gets a gradient), teacher forward, both with logits on
the scored positions only (from the batch's first completion position on, as our trainer computes them), and on the
on-policy steps a sampled `generate` of exactly as many new tokens as our rollout produced (`min_new_tokens` =
`max_new_tokens`). It leaves out what any trainer must add on top: the loss itself, alignment, tokenisation and
the optimiser step (whose cost is printed separately). It is measured right after each of our runs.

CPU memory: by default (`--malloc keep`) glibc is set once, before any run, to keep freed memory for reuse
(`distill.cpu_memory`, which `DistillTrainer` sets by default on the CPU), so ours, TRL and the floor all run
without page-faulting fresh logits-sized buffers; `--malloc default` leaves glibc's policy for all three. The
optimiser is transformers' default AdamW (`adamw_torch_fused`) in both trainers and in the floor's timed step.

Shared machines: wall-clock times are printed as asked (the `ratio ours/TRL` and `ours step time / floor` lines),
and next to them the CPU time of this process (`time.process_time`), which other workers' load distorts much
less. On CPU the default is one torch thread: with two OpenMP threads on two cores that other processes also
use, every op waits for the thread that was preempted and steps became 2-6x slower and erratic (`--threads 2`
to use both cores anyway). The full run alternates ours/TRL twice (`--repeats`) so that load drifting during
the run hits both trainers alike; per-repeat ratios are printed.

Run: `python bench/vs_trl.py` (full, about 6 minutes on 2 cores), `--quick` (smoke run, under a minute),
`--gpu` (CUDA + bf16 and a larger configuration). Tokenizers are trained once and cached in `bench/out/vs_trl/`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import random
import statistics
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import datasets  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402

from distill.cpu_memory import keep_freed_memory  # noqa: E402
from distill.data.tokenizers import load_tokenizer  # noqa: E402
from distill.trainer import DistillConfig, DistillTrainer, LambdaSchedule  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

datasets.disable_progress_bars()
transformers.logging.set_verbosity_error()


from vs_trl_report import Clock, instrument, report  # noqa: E402
from vs_trl_setup import (  # noqa: E402
    OUT,
    code_rows,
    cpu_model,
    demo_rows,
    llama,
    n_params,
    tokenizer_paths,
)


class OurBench(DistillTrainer):
    """`DistillTrainer` plus timers and counters (no behaviour change)."""

    clock: Clock

    def training_step(self, model, inputs, num_items_in_batch=None):
        return self.clock.wrap("training_step", super().training_step)(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            batch = inputs["batch"]
            self.clock.info["tokens"] = int((batch.student.labels != -100).sum())
            self.clock.info["on_policy"] = batch.source == "on_policy"
            self.clock.info["student_shape"] = tuple(batch.student.input_ids.shape)
            teacher_ids = (batch.teacher or batch.student).input_ids
            self.clock.info["teacher_shape"] = tuple(teacher_ids.shape)
            # the positions whose logits our trainer computes (from the first completion position on)
            self.clock.info["student_keep"] = batch.student.scored_tail()
            self.clock.info["teacher_keep"] = (batch.teacher or batch.student).scored_tail()
        return self.clock.wrap("compute_loss", super().compute_loss)(model, inputs, return_outputs, num_items_in_batch)


def trl_bench_class():
    from trl.experimental.gold.gold_trainer import GOLDTrainer

    class TRLBench(GOLDTrainer):
        """`GOLDTrainer` plus the same timers and counters (no behaviour change)."""

        clock: Clock

        def _prepare_inputs(self, generation_batch):
            if not self.model.training:
                return super()._prepare_inputs(generation_batch)
            return self.clock.wrap("prepare", super()._prepare_inputs)(generation_batch)

        def training_step(self, model, inputs, num_items_in_batch=None):
            return self.clock.wrap("training_step", super().training_step)(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self.clock.info["tokens"] = int((inputs["labels"] != -100).sum())
                slice_idx = (self._step - 1) % self.args.gradient_accumulation_steps
                self.clock.info["on_policy"] = bool(self._buffered_on_policy[slice_idx])
                self.clock.info["student_shape"] = tuple(inputs["input_ids"].shape)
            return self.clock.wrap("compute_loss", super().compute_loss)(
                model, inputs, return_outputs, num_items_in_batch)

    return TRLBench


class ScriptedDraws:
    """Stands in for the `random` module inside TRL's gold_trainer: `random()` replays a fixed on/off pattern
    (0.0 = on-policy, as `0.0 <= lmbda`; 1.0 = off-policy), everything else is the real module."""

    def __init__(self, pattern: list[bool]):
        self.pattern, self.index = pattern, 0

    def random(self) -> float:
        value = 0.0 if self.pattern[self.index % len(self.pattern)] else 1.0
        self.index += 1
        return value

    def __getattr__(self, name):
        return getattr(random, name)


# --- the two runs ----------------------------------------------------------------------------------------------
@dataclass
class Setup:
    student_tok_path: Path
    teacher_tok_path: Path
    rows: list[dict]
    student_dims: tuple[int, int]
    teacher_dims: tuple[int, int]
    batch: int
    steps: int
    warmup: int
    lmbda: float
    max_new_tokens: int
    temperature: float
    lr: float
    seed: int
    gpu: bool
    keep_freed_memory: bool


def common_args(s: Setup, name: str) -> dict:
    return {
        "output_dir": str(OUT / f"run-{name}"), "max_steps": s.warmup + s.steps, "per_device_train_batch_size": s.batch,
        "gradient_accumulation_steps": 1, "learning_rate": s.lr, "lr_scheduler_type": "constant", "warmup_steps": 0,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "optim": "adamw_torch_fused", "seed": s.seed, "data_seed": s.seed,
        "report_to": [], "logging_steps": 10_000, "save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True,
        "use_cpu": not s.gpu, "bf16": s.gpu, "gradient_checkpointing": False, "dataloader_num_workers": 0,
        "lmbda": s.lmbda, "beta": 0.5,
    }


def run_ours(s: Setup, profile: bool) -> Clock:
    student_tok, teacher_tok = load_tokenizer(s.student_tok_path), load_tokenizer(s.teacher_tok_path)
    student = llama(student_tok, *s.student_dims, seed=s.seed)
    teacher = llama(teacher_tok, *s.teacher_dims, seed=s.seed + 1)
    config = DistillConfig(**common_args(s, "ours"), method="gold", merge="bayesian", max_new_tokens=s.max_new_tokens,
                           generation_temperature=s.temperature, top_p=1.0, top_k=0, loss_temperature=1.0,
                           keep_freed_cpu_memory=s.keep_freed_memory)
    clock = Clock(s.gpu)
    OurBench.clock = clock
    data = datasets.Dataset.from_list(s.rows)
    trainer = OurBench(model=student, teacher_model=teacher, args=config, train_dataset=data,
                       processing_class=student_tok, teacher_tokenizer=teacher_tok)
    instrument(trainer, clock, student, teacher)
    trainer.builder.build = clock.wrap("prepare", trainer.builder.build)
    with profiled(profile, "ours"):
        trainer.train()
    return clock


def run_trl(s: Setup, pattern: list[bool], profile: bool) -> Clock:
    from trl.experimental.gold import gold_trainer
    from trl.experimental.gold.gold_config import GOLDConfig

    student_tok = load_tokenizer(s.student_tok_path)
    teacher_tok = load_tokenizer(s.teacher_tok_path)
    student = llama(student_tok, *s.student_dims, seed=s.seed)
    teacher = llama(teacher_tok, *s.teacher_dims, seed=s.seed + 1)
    config = GOLDConfig(
        **common_args(s, "trl"), max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=1.0,
        top_k=0, use_uld_loss=True, use_extended_uld=True, uld_use_hybrid_loss=True,
        uld_token_merge_strategy="bayesian", uld_student_temperature=1.0, uld_teacher_temperature=1.0,
        teacher_tokenizer_name_or_path=str(s.teacher_tok_path), max_length=1024, disable_dropout=True,
        dataset_num_proc=None, log_completions=False,
    )
    # TRL's own text format: plain prompt/completion strings (no chat template needed).
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in s.rows])
    clock = Clock(s.gpu)
    bench_class = trl_bench_class()
    bench_class.clock = clock
    real_random = gold_trainer.random
    gold_trainer.random = ScriptedDraws(pattern)
    try:
        trainer = bench_class(model=student, teacher_model=teacher, args=config, train_dataset=data,
                              processing_class=student_tok)
        instrument(trainer, clock, student, teacher)
        with profiled(profile, "TRL"):
            trainer.train()
    finally:
        gold_trainer.random = real_random
    return clock


@contextlib.contextmanager
def profiled(enabled: bool, name: str):
    if not enabled:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
        print(f"--- cProfile of the {name} run (whole run incl. warm-up, by own time) ---")
        print("\n".join(stream.getvalue().splitlines()[:60]))


# --- the floor -------------------------------------------------------------------------------------------------
def floor_times(s: Setup, steps: list[dict]) -> tuple[list[dict], dict]:
    """Replay each timed step's shapes on fresh models: rollout (on-policy steps) + student fwd/bwd + teacher fwd.
    Returns per step `{"time", "cpu:time"}` (wall and CPU seconds), and the same for one AdamW step on the student
    (the median of 4)."""
    student_tok, teacher_tok = load_tokenizer(s.student_tok_path), load_tokenizer(s.teacher_tok_path)
    device = torch.device("cuda" if s.gpu else "cpu")
    student = llama(student_tok, *s.student_dims, seed=s.seed).to(device)
    teacher = llama(teacher_tok, *s.teacher_dims, seed=s.seed + 1).to(device).eval().requires_grad_(False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if s.gpu else contextlib.nullcontext()
    clock = Clock(s.gpu)
    vs, vt = len(student_tok), len(teacher_tok)
    gen = torch.Generator().manual_seed(0)

    def ids(shape, vocab):
        return torch.randint(2, vocab, shape, generator=gen).to(device)

    def one(step: dict) -> None:
        if step.get("gen_new_tokens"):
            n = step["gen_new_tokens"]
            prompt = ids(step["gen_prompt_shape"], vs)
            student.eval()
            with torch.no_grad(), autocast:
                student.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=True, temperature=s.temperature, top_p=1.0, top_k=0,
                                 eos_token_id=student_tok.eos_token_id, pad_token_id=student_tok.pad_token_id)
            student.train()
        s_ids, t_ids = ids(step["student_shape"], vs), ids(step["teacher_shape"], vt)
        with autocast:  # logits where our trainer needs them: the scored tail of the batch
            logits = student(input_ids=s_ids, attention_mask=torch.ones_like(s_ids), use_cache=False,
                             logits_to_keep=step["student_keep"]).logits
            loss = logits.float().logsumexp(-1).mean()
        loss.backward()
        with torch.no_grad(), autocast:
            teacher(input_ids=t_ids, attention_mask=torch.ones_like(t_ids), use_cache=False,
                    logits_to_keep=step["teacher_keep"])
        student.zero_grad(set_to_none=True)

    timed_one = clock.wrap("step", one)
    one(steps[0])  # warm-up
    times = []
    for step in steps:
        timed_one(step)
        times.append({"time": clock.phases.pop("step"), "cpu:time": clock.phases.pop("cpu:step")})
    optimizer = torch.optim.AdamW(student.parameters(), lr=s.lr, fused=True)  # as the runs ("adamw_torch_fused")
    for p in student.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    opt = []
    for _ in range(4):
        clock.wrap("opt", optimizer.step)()
        opt.append({"time": clock.phases.pop("opt"), "cpu:time": clock.phases.pop("cpu:opt")})
    return times, {key: statistics.median(o[key] for o in opt) for key in ("time", "cpu:time")}


# --- report ----------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (batch 2, 3 timed steps, 16 tokens)")
    parser.add_argument("--gpu", action="store_true", help="CUDA + bf16 and a larger configuration")
    parser.add_argument("--steps", type=int, help="timed optimiser steps (default 20; quick 3; gpu 30)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (default 2; quick 1)")
    parser.add_argument("--batch", type=int, help="per-device batch size (default 8; quick 2; gpu 16)")
    parser.add_argument("--max-new-tokens", type=int, help="completion length (default 64; quick 16; gpu 128)")
    parser.add_argument("--lmbda", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=("code", "demo"), default="code",
                        help="code: stdlib code completion rows; demo: distill's running-sum task")
    parser.add_argument("--student-vocab", type=int, default=16_000)
    parser.add_argument("--teacher-vocab", type=int, default=24_000)
    parser.add_argument("--corpus-mb", type=float, default=3.0, help="tokenizer training text per tokenizer")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default 1 on CPU, see the docstring)")
    parser.add_argument("--repeats", type=int, help="ours/TRL run pairs, alternated (default 2; quick and gpu 1)")
    parser.add_argument("--only", choices=("both", "ours", "trl"), default="both")
    parser.add_argument("--profile", action="store_true", help="cProfile each run (slows both; not for timing)")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="CPU: 'keep' = glibc keeps freed memory for reuse (distill.cpu_memory, what "
                             "DistillTrainer sets by default), set once for every run (ours, TRL, floor); "
                             "'default' = glibc's own policy, also for our trainer")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: CUDA is not available on this machine")
    size = "quick" if args.quick else "gpu" if args.gpu else "full"
    args.repeats = args.repeats or (2 if size == "full" else 1)
    if args.threads or not args.gpu:
        torch.set_num_threads(args.threads or 1)
    keep_memory = args.malloc == "keep" and not args.gpu and keep_freed_memory()
    defaults = {"quick": (3, 1, 2, 16), "full": (20, 2, 8, 64), "gpu": (30, 2, 16, 128)}[size]
    args.steps = args.steps or defaults[0]
    args.warmup = defaults[1] if args.warmup is None else args.warmup
    args.batch = args.batch or defaults[2]
    args.max_new_tokens = args.max_new_tokens or defaults[3]
    student_dims, teacher_dims = ((512, 4), (1024, 8)) if args.gpu else ((128, 2), (256, 4))

    OUT.mkdir(parents=True, exist_ok=True)
    s_path, t_path = tokenizer_paths(args.student_vocab, args.teacher_vocab, args.corpus_mb)
    student_tok, teacher_tok = load_tokenizer(s_path), load_tokenizer(t_path)
    n_rows = max(256, 2 * args.batch * (args.steps + args.warmup))
    rows = demo_rows(n_rows, args.seed) if args.data == "demo" else code_rows(student_tok, n_rows, args.max_new_tokens,
                                                                               args.seed)
    setup = Setup(s_path, t_path, rows, student_dims, teacher_dims, args.batch, args.steps, args.warmup, args.lmbda,
                  args.max_new_tokens, args.temperature, args.lr, args.seed, args.gpu, keep_memory)
    total = args.warmup + args.steps
    schedule = LambdaSchedule(args.lmbda, seed=args.seed)
    pattern = [schedule.on_policy(step, 0) for step in range(total)]  # GA=1: one micro-batch, index 0

    shared = len(set(student_tok.get_vocab()) & set(teacher_tok.get_vocab()))
    s_model, t_model = llama(student_tok, *student_dims, 0), llama(teacher_tok, *teacher_dims, 1)
    device = torch.cuda.get_device_name(0) if args.gpu else cpu_model()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
          f"tokenizers {tokenizers.__version__}, datasets {datasets.__version__}, python {platform.python_version()}")
    precision = "cuda bf16" if args.gpu else "cpu fp32"
    print(f"device {precision}, {device}, torch threads {torch.get_num_threads()}, os.cpu_count {os.cpu_count()}")
    print("allocator: " + ("glibc keeps freed memory (distill.cpu_memory), for all runs" if keep_memory
                           else "glibc default policy, for all runs"))
    print(f"student: byte-level BPE {len(student_tok)} pieces (digits split), Llama hidden {student_dims[0]} x "
          f"{student_dims[1]} layers, {n_params(s_model)} params")
    print(f"teacher: byte-level BPE {len(teacher_tok)} pieces (digit runs), Llama hidden {teacher_dims[0]} x "
          f"{teacher_dims[1]} layers, {n_params(t_model)} params; {shared} piece strings shared")
    mean_prompt = statistics.mean(len(student_tok(r["prompt"])["input_ids"]) for r in rows[:64])
    mean_completion = statistics.mean(len(student_tok(r["completion"])["input_ids"]) + 1 for r in rows[:64])
    print(f"data: {args.data}, {len(rows)} rows, student tokens/row: prompt {mean_prompt:.0f}, completion+EOS "
          f"{mean_completion:.0f}")
    print(f"batch {args.batch}, grad accumulation 1, steps {args.warmup} warm-up + {args.steps} timed, "
          f"{args.repeats} repeat(s) alternating ours/TRL, lmbda "
          f"{args.lmbda} (on-policy steps: {''.join('P' if p else '.' for p in pattern)}, same in both runs), "
          f"max_new_tokens = max_completion_length = {args.max_new_tokens}, temperature {args.temperature}, "
          f"top_p 1, top_k 0, lr {args.lr} constant, AdamW (fused, transformers' default), seed {args.seed}")
    print("TRL: GOLDTrainer use_uld_loss, use_extended_uld, uld_use_hybrid_loss, merge bayesian, adaptive weights; "
          "ours: DistillTrainer method=gold, merge=bayesian, adaptive weights")
    sys.stdout.flush()
    del s_model, t_model

    runs: dict[str, list[list[dict]]] = defaultdict(list)  # per trainer, per repeat: the timed steps
    floors: list[tuple[list[dict], dict]] = []
    for repeat in range(args.repeats):
        for name in ("ours", "trl"):
            if args.only not in ("both", name):
                continue
            start = time.perf_counter()
            clock = run_ours(setup, args.profile) if name == "ours" else run_trl(setup, pattern, args.profile)
            got = [bool(st.get("on_policy")) for st in clock.steps]
            if got != pattern:
                print(f"WARNING: {name} on-policy steps {got} differ from the scheduled ones")
            runs[name].append(clock.steps[args.warmup :])
            if name == "ours":  # the floor right after our run, under the same machine load
                floors.append(floor_times(setup, runs[name][-1]))
            print(f"[repeat {repeat + 1}/{args.repeats}: {name} run{' + floor' if name == 'ours' else ''} "
                  f"{time.perf_counter() - start:.1f}s wall incl. setup]")
            sys.stdout.flush()
    report(runs, floors)


if __name__ == "__main__":
    main()
