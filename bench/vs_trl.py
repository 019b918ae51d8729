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
backward (a log-sum-exp over the full logits, so every logit gets a gradient), teacher forward, and on the
on-policy steps a sampled `generate` of exactly as many new tokens as our rollout produced (`min_new_tokens` =
`max_new_tokens`). It leaves out what any trainer must add on top: the loss itself, alignment, tokenisation and
the optimiser step (whose cost is printed separately). It is measured right after each of our runs.

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
import shutil
import statistics
import sys
import sysconfig
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
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback  # noqa: E402

from distill.data.tokenizers import load_tokenizer, save_tokenizer, train_byte_level_bpe  # noqa: E402
from distill.trainer import DistillConfig, DistillTrainer, LambdaSchedule  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "vs_trl"
datasets.disable_progress_bars()
transformers.logging.set_verbosity_error()


# --- tokenizers ------------------------------------------------------------------------------------------------
def stdlib_files() -> list[Path]:
    """The standard library's own modules (tests and site-packages left out), in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def read_corpus(files: list[Path], megabytes: float) -> list[str]:
    texts, size = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        size += len(text.encode("utf-8"))
        if size >= megabytes * 2**20:
            break
    return texts


def train_teacher_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """GPT-2/Llama-3 style byte-level BPE *without* individual digit splitting, with its own special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def tokenizer_paths(student_vocab: int, teacher_vocab: int, megabytes: float) -> tuple[Path, Path]:
    """Train (once; cached under bench/out/vs_trl/) and save the two tokenizers; return their folders."""
    files = stdlib_files()
    paths = (OUT / f"tok-student-{student_vocab}-{megabytes:g}mb", OUT / f"tok-teacher-{teacher_vocab}-{megabytes:g}mb")
    for side, path in zip(("student", "teacher"), paths, strict=True):
        if (path / "tokenizer.json").exists():
            continue
        start = time.perf_counter()
        half = files[0::2] if side == "student" else files[1::2]
        texts = read_corpus(half, megabytes)
        if side == "student":
            tok = train_byte_level_bpe(texts, student_vocab)  # digits split individually, <|endoftext|>/<|pad|>
        else:
            tok = train_teacher_bpe(texts, teacher_vocab)
        staging = path.with_name(path.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        save_tokenizer(tok, staging)
        staging.rename(path)
        print(f"trained the {side} tokenizer ({len(tok)} pieces, {len(texts)} files) in "
              f"{time.perf_counter() - start:.1f}s -> {path}")
    return paths


# --- data ------------------------------------------------------------------------------------------------------
def code_rows(student_tok, n: int, completion_tokens: int, seed: int = 0, prompt_chars: int = 240) -> list[dict]:
    """Code-completion rows from the standard library: the prompt is up to `prompt_chars` characters of whole lines,
    the completion the text that follows, cut after `completion_tokens - 1` student tokens (so with its EOS it is
    as long as a rollout of `completion_tokens` tokens)."""
    rng = random.Random(seed)
    texts = [t for t in read_corpus(stdlib_files()[::7], 2.0) if t.count("\n") > 60]
    rows = []
    while len(rows) < n:
        lines = rng.choice(texts).splitlines(keepends=True)
        i = rng.randrange(10, len(lines) - 40)
        prompt = "".join(lines[i - 10 : i])[-prompt_chars:]
        prompt = prompt[prompt.find("\n") + 1 :] if len(prompt) == prompt_chars else prompt
        tail = "".join(lines[i : i + 40])
        enc = student_tok(tail, add_special_tokens=False, return_offsets_mapping=True)
        if not prompt.strip() or len(enc["input_ids"]) < completion_tokens:
            continue
        completion = tail[: enc["offset_mapping"][completion_tokens - 2][1]]
        if not completion.strip():
            continue
        rows.append({"id": f"code-{len(rows)}", "prompt": prompt, "prompt_messages": [], "completion": completion})
    return rows


def demo_rows(n: int, seed: int = 0) -> list[dict]:
    from distill.data.demo import DemoConfig, make_demo_dataset

    split = make_demo_dataset(DemoConfig(seed=seed, train_size=n, validation_size=1, test_size=1))["train"]
    return [{k: r[k] for k in ("id", "prompt", "prompt_messages", "completion")} for r in split]


# --- models ----------------------------------------------------------------------------------------------------
def llama(tokenizer, hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 64), num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=2048, attention_dropout=0.0, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def n_params(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"


# --- timing ----------------------------------------------------------------------------------------------------
class Clock:
    """Per-step wall times (and CPU times of this process) of the training loop and of the phases inside it."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.phases: dict[str, float] = defaultdict(float)
        self.info: dict = {}
        self.steps: list[dict] = []
        self.last: tuple[float, float] | None = None

    def now(self) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def wrap(self, name: str, fn, grad_only: bool = False):
        def timed(*args, **kwargs):
            if grad_only and not torch.is_grad_enabled():
                return fn(*args, **kwargs)
            wall, cpu = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                wall_end, cpu_end = self.now()
                self.phases[name] += wall_end - wall
                self.phases["cpu:" + name] += cpu_end - cpu

        return timed

    def start(self) -> None:
        self.last = self.now()

    def step_end(self) -> None:
        now = self.now()
        self.steps.append({"time": now[0] - self.last[0], "cpu:time": now[1] - self.last[1], **self.phases,
                           **self.info})
        self.phases.clear()
        self.info = {}
        self.last = now


class StepTimer(TrainerCallback):
    def __init__(self, clock: Clock):
        self.clock = clock

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step_end()


def instrument(trainer, clock: Clock, student, teacher) -> None:
    """Time student generate / forward (with grad) and teacher forward, and record rollout shapes."""
    generate = student.generate

    def recorded_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        sequences = out.sequences if hasattr(out, "sequences") else out
        clock.info["gen_prompt_shape"] = tuple(ids.shape)
        clock.info["gen_new_tokens"] = int(sequences.shape[1] - ids.shape[1])
        return out

    student.generate = clock.wrap("generate", recorded_generate)
    student.forward = clock.wrap("student_fwd", student.forward, grad_only=True)
    teacher.forward = clock.wrap("teacher_fwd", teacher.forward)
    trainer.add_callback(StepTimer(clock))


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


def common_args(s: Setup, name: str) -> dict:
    return {
        "output_dir": str(OUT / f"run-{name}"), "max_steps": s.warmup + s.steps, "per_device_train_batch_size": s.batch,
        "gradient_accumulation_steps": 1, "learning_rate": s.lr, "lr_scheduler_type": "constant", "warmup_steps": 0,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "optim": "adamw_torch", "seed": s.seed, "data_seed": s.seed,
        "report_to": [], "logging_steps": 10_000, "save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True,
        "use_cpu": not s.gpu, "bf16": s.gpu, "gradient_checkpointing": False, "dataloader_num_workers": 0,
        "lmbda": s.lmbda, "beta": 0.5,
    }


def run_ours(s: Setup, profile: bool) -> Clock:
    student_tok, teacher_tok = load_tokenizer(s.student_tok_path), load_tokenizer(s.teacher_tok_path)
    student = llama(student_tok, *s.student_dims, seed=s.seed)
    teacher = llama(teacher_tok, *s.teacher_dims, seed=s.seed + 1)
    config = DistillConfig(**common_args(s, "ours"), method="gold", merge="bayesian", max_new_tokens=s.max_new_tokens,
                           generation_temperature=s.temperature, top_p=1.0, top_k=0, loss_temperature=1.0)
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
        with autocast:
            logits = student(input_ids=s_ids, attention_mask=torch.ones_like(s_ids), use_cache=False).logits
            loss = logits.float().logsumexp(-1).mean()
        loss.backward()
        with torch.no_grad(), autocast:
            teacher(input_ids=t_ids, attention_mask=torch.ones_like(t_ids), use_cache=False)
        student.zero_grad(set_to_none=True)

    timed_one = clock.wrap("step", one)
    one(steps[0])  # warm-up
    times = []
    for step in steps:
        timed_one(step)
        times.append({"time": clock.phases.pop("step"), "cpu:time": clock.phases.pop("cpu:step")})
    optimizer = torch.optim.AdamW(student.parameters(), lr=s.lr)
    for p in student.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    opt = []
    for _ in range(4):
        clock.wrap("opt", optimizer.step)()
        opt.append({"time": clock.phases.pop("opt"), "cpu:time": clock.phases.pop("cpu:opt")})
    return times, {key: statistics.median(o[key] for o in opt) for key in ("time", "cpu:time")}


# --- report ----------------------------------------------------------------------------------------------------
PHASES = (
    ("generate", "student rollout (generate)"),
    ("prepare-", "batch prep: tokenise/align/offsets"),
    ("student_fwd", "student forward"),
    ("teacher_fwd", "teacher forward"),
    ("loss", "loss (+ TRL: teacher tokenisation)"),
    ("backward", "backward"),
    ("other", "optimiser, data, loop"),
)


def phase_means(steps: list[dict], prefix: str) -> dict[str, float]:
    def mean(key):
        return sum(st.get(prefix + key, 0.0) for st in steps) / len(steps)

    out = {"generate": mean("generate"), "student_fwd": mean("student_fwd"), "teacher_fwd": mean("teacher_fwd")}
    out["prepare-"] = mean("prepare") - out["generate"]
    out["loss"] = mean("compute_loss") - out["student_fwd"] - out["teacher_fwd"]
    out["backward"] = mean("training_step") - mean("prepare") - mean("compute_loss")
    out["other"] = mean("time") - mean("training_step")
    out["total"] = mean("time")
    return out


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
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: CUDA is not available on this machine")
    size = "quick" if args.quick else "gpu" if args.gpu else "full"
    args.repeats = args.repeats or (2 if size == "full" else 1)
    if args.threads or not args.gpu:
        torch.set_num_threads(args.threads or 1)
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
                  args.max_new_tokens, args.temperature, args.lr, args.seed, args.gpu)
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
          f"top_p 1, top_k 0, lr {args.lr} constant, AdamW, seed {args.seed}")
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


def mean_of(steps: list[dict], key: str, on_policy: bool | None = None) -> float:
    values = [st.get(key, 0.0) for st in steps if on_policy is None or st["on_policy"] == on_policy]
    return statistics.mean(values) if values else float("nan")


def rate(steps: list[dict], key: str = "time") -> float:
    """Student completion tokens per second (wall: key "time"; CPU of this process: "cpu:time")."""
    return sum(st["tokens"] for st in steps) / sum(st[key] for st in steps)


def report(runs: dict[str, list[list[dict]]], floors: list[tuple[list[dict], dict]]) -> None:
    label = {"ours": "ours (DistillTrainer)", "trl": "TRL (GOLDTrainer)"}
    timed = {name: [st for steps in per_repeat for st in steps] for name, per_repeat in runs.items()}
    repeats = len(next(iter(runs.values())))
    print()
    print(f"all timed steps of {repeats} repeat(s):")
    print("| trainer               | s/step | on-policy s/step | off-policy s/step | tokens/step on / off | tokens/s "
          "| CPU s/step | tokens/CPU-s |")
    print("|-----------------------|-------:|-----------------:|------------------:|---------------------:|---------:"
          "|-----------:|-------------:|")
    for name, steps in timed.items():
        print(f"| {label[name]:<21} | {mean_of(steps, 'time'):6.2f} | {mean_of(steps, 'time', True):16.2f} | "
              f"{mean_of(steps, 'time', False):17.2f} | "
              f"{mean_of(steps, 'tokens', True):9.1f} / {mean_of(steps, 'tokens', False):8.1f} | "
              f"{rate(steps):8.1f} | {mean_of(steps, 'cpu:time'):10.2f} | {rate(steps, 'cpu:time'):12.1f} |")

    print()
    print("time per step by phase, mean over the timed steps (wall s / CPU s of this process):")
    means = {name: (phase_means(steps, ""), phase_means(steps, "cpu:")) for name, steps in timed.items()}
    print(f"| {'phase':<36} |" + "".join(f" {label[n]:>21} |" for n in means))
    print(f"|{'-' * 38}|" + "".join(f"{'-' * 22}:|" for _ in means))
    for key, text in (*PHASES, ("total", "total")):
        print(f"| {text:<36} |" + "".join(f" {wall[key]:9.3f} / {cpu[key]:9.3f} |" for wall, cpu in means.values()))

    both = "ours" in runs and "trl" in runs
    print()
    for r in range(repeats):
        parts = [f"repeat {r + 1}:"]
        if both:
            ours, trl = runs["ours"][r], runs["trl"][r]
            parts.append(f"ours/TRL tokens/s {rate(ours) / rate(trl):.2f} wall, "
                         f"{rate(ours, 'cpu:time') / rate(trl, 'cpu:time'):.2f} CPU;")
        if floors:
            ours, floor = runs["ours"][r], floors[r][0]
            parts.append(f"ours/floor {mean_of(ours, 'time') / mean_of(floor, 'time'):.2f} wall, "
                         f"{mean_of(ours, 'cpu:time') / mean_of(floor, 'cpu:time'):.2f} CPU")
        print(" ".join(parts))

    if floors:
        steps = timed["ours"]
        floor = [st for f, _ in floors for st in f]
        opt = floors[-1][1]
        on_steps = sum(st["on_policy"] for st in runs["ours"][0])
        generated = sum(st.get("gen_new_tokens", 0) * st.get("gen_prompt_shape", (0,))[0] for st in runs["ours"][0])
        trained = sum(st["tokens"] for st in runs["ours"][0])
        print(f"floor = student fwd+bwd + teacher fwd on our batch shapes + generate on the {on_steps} on-policy steps "
              f"({generated} tokens generated of {trained} trained per repeat): {mean_of(floor, 'time'):.3f} s/step "
              f"wall, {mean_of(floor, 'cpu:time'):.3f} s/step CPU; one AdamW step on the student (not in the floor): "
              f"{opt['time']:.3f} s wall")
        print(f"(CPU time: ours / floor = {mean_of(steps, 'cpu:time') / mean_of(floor, 'cpu:time'):.2f})")
        print(f"ours step time / floor = {mean_of(steps, 'time') / mean_of(floor, 'time'):.2f}")
    if both:
        print(f"(CPU time: ours/TRL tokens per CPU-second = "
              f"{rate(timed['ours'], 'cpu:time') / rate(timed['trl'], 'cpu:time'):.2f})")
        print(f"ratio ours/TRL = {rate(timed['ours']) / rate(timed['trl']):.2f}")


if __name__ == "__main__":
    main()
