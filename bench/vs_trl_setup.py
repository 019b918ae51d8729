"""Inputs of bench/vs_trl.py: tokenizers trained on the Python standard library, the rows, the tiny models."""

from __future__ import annotations

import contextlib
import platform
import random
import shutil
import sysconfig
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distill.data.tokenizers import save_tokenizer, train_byte_level_bpe

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "vs_trl"


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
