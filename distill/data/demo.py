"""The demo task: a deterministic, verifiable multi-step reasoning task for distillation on a CPU.

**Iterate an affine map mod 10, showing the work.** The prompt gives a step count ``n``, coefficients ``a``, ``b``
and a start ``x`` (digits); the answer applies ``x <- (a*x + b) mod 10`` ``n`` times, one worked step per
state, counting down ``k = n .. 1``. Each step writes the product first, ``m = a*x mod 10``, then the new state
``y = (m + b) mod 10``, and the next step starts from ``y``. Exact format::

    prompt:     "n=3 a=6 b=7 x=2\n="
    completion: " 3:6*2=2+7=9 2:6*9=4+7=1 1:6*1=6+7=3"

Every step depends on the previous step's result, so one wrong digit derails the rest of the answer: exposure
bias (training on teacher prefixes, generating from one's own) shows up as accuracy falling with answer length.
Each step needs only the step before it (the coefficients are carried along), which keeps the task learnable by
a model of a few million parameters in minutes, while the answer grows to any length.

The completion starts with a space (so it tokenises the same way whatever the prompt's last token is), steps
are separated by single spaces, and there is no trailing space.

Every split is a :class:`datasets.Dataset` with the columns of :data:`EXAMPLE_FEATURES` plus ``answer_length``
(``n``, the number of steps). Prompts are unique across all splits, and the same :class:`DemoConfig` always
gives the same rows (``random.Random(seed)``, no global state). :func:`save_dataset` writes any dataset folder
atomically; it is shared with user data (``distill.data.load``).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, List, Value
from pydantic import BaseModel, ConfigDict, Field, model_validator

from distill.io import atomic_directory

__all__ = [
    "DEMO_FEATURES",
    "EXAMPLE_FEATURES",
    "SPLITS",
    "DemoConfig",
    "check_answer",
    "dataset_card",
    "format_completion",
    "format_prompt",
    "make_demo_dataset",
    "save_dataset",
    "size_category",
    "solve",
    "splits_yaml",
]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
PROMPTS_PER_LENGTH = 1000  # the (a, b, x) digit triples

#: The columns every prepared dataset has (demo and user data): chat prompts go in ``prompt_messages`` with
#: ``prompt == ""``; plain prompts in ``prompt`` with ``prompt_messages == []``.
EXAMPLE_FEATURES = Features(
    {
        "id": Value("string"),
        "prompt": Value("string"),
        "prompt_messages": List({"role": Value("string"), "content": Value("string")}),
        "completion": Value("string"),
    }
)
DEMO_FEATURES = Features({**EXAMPLE_FEATURES, "answer_length": Value("int32")})

_PROMPT_RE = re.compile(r"n=([1-9]\d*) a=(\d) b=(\d) x=(\d)\n=")


class DemoConfig(BaseModel):
    """Parameters of the demo dataset; the answer length is drawn uniformly from ``[min_length, max_length]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    train_size: int = Field(4000, ge=1)
    validation_size: int = Field(200, ge=1)
    test_size: int = Field(400, ge=1)
    min_length: int = Field(3, ge=1)
    max_length: int = Field(8, ge=1, le=1024)

    @property
    def total_size(self) -> int:
        return self.train_size + self.validation_size + self.test_size

    @model_validator(mode="after")
    def _check(self) -> DemoConfig:
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) must be <= max_length ({self.max_length})")
        capacity = PROMPTS_PER_LENGTH * (self.max_length - self.min_length + 1)
        if self.total_size > capacity:
            raise ValueError(
                f"train_size + validation_size + test_size = {self.total_size} unique prompts requested, but only "
                f"{capacity} distinct prompts exist with lengths {self.min_length}..{self.max_length}"
            )
        return self


def format_prompt(n: int, a: int, b: int, x: int) -> str:
    """``(3, 6, 7, 2)`` -> ``"n=3 a=6 b=7 x=2\\n="``."""
    return f"n={n} a={a} b={b} x={x}\n="


def format_completion(n: int, a: int, b: int, x: int) -> str:
    """The worked iteration: ``(3, 6, 7, 2)`` -> ``" 3:6*2=2+7=9 2:6*9=4+7=1 1:6*1=6+7=3"``."""
    steps = []
    for k in range(n, 0, -1):
        m = (a * x) % 10
        y = (m + b) % 10
        steps.append(f"{k}:{a}*{x}={m}+{b}={y}")
        x = y
    return " " + " ".join(steps)


def _parse_prompt(prompt: str) -> tuple[int, int, int, int]:
    match = _PROMPT_RE.fullmatch(prompt.strip())
    if match is None:
        raise ValueError(f"not a demo prompt: {prompt!r}")
    n, a, b, x = map(int, match.groups())
    return n, a, b, x


def solve(prompt: str) -> str:
    """The exact completion for a demo prompt (leading space included); ValueError if it is not one."""
    return format_completion(*_parse_prompt(prompt))


def check_answer(prompt: str, completion: str) -> bool:
    """True iff ``completion`` is the right answer, ignoring only whitespace around prompt and completion.

    Spacing *inside* the answer must be exact (single spaces), as must the number of steps; a prompt that is
    not a demo prompt gives False.
    """
    try:
        expected = solve(prompt)
    except ValueError:
        return False
    return completion.strip() == expected.strip()


def _draw_lengths(rng: random.Random, config: DemoConfig) -> list[int]:
    """One answer length per example, uniform over the lengths that still have unused prompts."""
    lengths = list(range(config.min_length, config.max_length + 1))
    counts = dict.fromkeys(lengths, 0)
    out = []
    for _ in range(config.total_size):
        n = rng.choice(lengths)
        out.append(n)
        counts[n] += 1
        if counts[n] == PROMPTS_PER_LENGTH:  # every prompt of this length is taken
            lengths.remove(n)
    return out


def _draw_numbers(rng: random.Random, n_digits: int, count: int) -> list[int]:
    """``count`` distinct integers in ``[0, 10**n_digits)``; exact sampling when they fill much of the range."""
    space = 10**n_digits
    if 2 * count >= space:
        return rng.sample(range(space), count)
    seen: set[int] = set()
    out = []
    while len(out) < count:
        x = rng.randrange(space)
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def make_demo_dataset(config: DemoConfig | None = None) -> DatasetDict:
    """Generate the train/validation/test splits of the demo task (deterministic in ``config``).

    All lengths are drawn first, then for each length the required number of distinct ``(a, b, x)`` triples, so
    no prompt repeats within or across splits. Rows are dealt in draw order: first ``train_size`` to train, then
    validation, then test.
    """
    config = config or DemoConfig()
    rng = random.Random(config.seed)
    lengths = _draw_lengths(rng, config)
    per_length = {n: iter(_draw_numbers(rng, 3, lengths.count(n))) for n in sorted(set(lengths))}
    sizes = {"train": config.train_size, "validation": config.validation_size, "test": config.test_size}
    splits, start = {}, 0
    for split in SPLITS:
        rows: dict[str, list] = {name: [] for name in DEMO_FEATURES}
        for i, n in enumerate(lengths[start : start + sizes[split]]):
            a, b, x = (int(c) for c in str(next(per_length[n])).zfill(3))
            rows["id"].append(f"{split}-{i:06d}")
            rows["prompt"].append(format_prompt(n, a, b, x))
            rows["prompt_messages"].append([])
            rows["completion"].append(format_completion(n, a, b, x))
            rows["answer_length"].append(n)
        start += sizes[split]
        splits[split] = Dataset.from_dict(rows, features=DEMO_FEATURES, split=split)
    return DatasetDict(splits)


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` tag for ``n`` rows (``"n<1K"``, ``"1K<n<10K"``, ...)."""
    bounds = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    if n < 1000:
        return "n<1K"
    for i in range(1, len(bounds)):
        if n < 10 ** (i + 3):
            return f"{bounds[i - 1]}<n<{bounds[i]}"
    return "n>1T"


def splits_yaml(dataset: DatasetDict) -> str:
    """The ``configs`` and ``dataset_info`` card metadata for a folder written by ``save_to_disk``."""
    files = "".join(f"      - split: {s}\n        path: {s}/*.arrow\n" for s in dataset)
    info = "".join(f"    - name: {s}\n      num_examples: {len(d)}\n" for s, d in dataset.items())
    return f"configs:\n  - config_name: default\n    data_files:\n{files}dataset_info:\n  splits:\n{info}"


def dataset_card(config: DemoConfig, dataset: DatasetDict) -> str:
    """A Hugging Face dataset card (README.md) for the demo dataset: YAML metadata, description, format, example."""
    total = sum(len(d) for d in dataset.values())
    first = dataset["train"][0] if "train" in dataset and len(dataset["train"]) else next(iter(dataset.values()))[0]
    sizes = ", ".join(f"{s}: {len(d)}" for s, d in dataset.items())
    return (
        "---\n"
        "pretty_name: Affine iteration mod 10 with worked steps (distill demo task)\n"
        "language:\n  - en\n"
        "license: apache-2.0\n"
        "task_categories:\n  - text-generation\n"
        f"size_categories:\n  - {size_category(total)}\n"
        "tags:\n  - synthetic\n  - knowledge-distillation\n  - reasoning\n"
        f"{splits_yaml(dataset)}"
        "---\n\n"
        "# Affine iteration mod 10 with worked steps\n\n"
        "A synthetic, exactly verifiable multi-step task for knowledge-distillation experiments on a CPU. The "
        "prompt gives a step count n and digits a, b, x; the answer applies x <- (a*x + b) mod 10 n times, "
        "writing each step as `k:a*x=m+b=y` with m = a*x mod 10 and y = (m + b) mod 10, for k = n down to 1. "
        "Each step starts from the previous step's result, so errors compound along the answer and exposure "
        "bias shows up as accuracy falling with answer length.\n\n"
        "## Format\n\n"
        '- `prompt`: `"n=<steps> a=<digit> b=<digit> x=<digit>\\n="`\n'
        '- `completion`: `" <steps separated by single spaces>"` (leading space, no trailing space)\n'
        "- `prompt_messages`: always `[]` (the column exists for schema compatibility with chat data)\n"
        "- `answer_length`: number of steps n, drawn uniformly from "
        f"[{config.min_length}, {config.max_length}]\n"
        "- `id`: `<split>-<row>`\n\n"
        "Prompts are unique across all splits. Grade with `distill.data.demo.check_answer(prompt, completion)`.\n\n"
        "## Example\n\n"
        f"```\nprompt:     {first['prompt']!r}\ncompletion: {first['completion']!r}\n```\n\n"
        "## Generation\n\n"
        f"Generated by `distill.data.demo.make_demo_dataset` with seed {config.seed}; sizes {sizes} "
        f"({total} rows). The same configuration always produces identical data.\n\n"
        f"```json\n{config.model_dump_json()}\n```\n"
    )


def save_dataset(dataset: Dataset | DatasetDict, path: str | os.PathLike, card: str | None = None) -> Path:
    """Write ``dataset.save_to_disk`` output (plus ``README.md`` = ``card``) to ``path`` atomically.

    Everything is written into a hidden sibling temp directory first, then swapped into place with renames
    (an existing ``path`` is moved aside and deleted only after the new folder is in place). On any failure the
    temp directory is removed and the previous content of ``path`` is left intact. Returns ``path``.
    """
    path = Path(path)
    with atomic_directory(path) as staging:
        dataset.save_to_disk(str(staging))
        if card is not None:
            (staging / "README.md").write_text(card, encoding="utf-8")
    return path
