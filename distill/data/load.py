"""Loading and validating user data into the schema of the demo dataset.

``source`` is a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a directory of them, a dict ``split -> file(s)``,
or a Hugging Face hub dataset name. Each row is either ``{"prompt": str, "completion": str, "id"?: str}`` or a
chat ``{"messages": [{"role", "content"}, ...], "id"?: str}`` whose last message is the assistant's reply (it
becomes ``completion``; the earlier messages become ``prompt_messages``, keeping only ``role`` and ``content``,
and ``prompt`` is ``""``).

The output has exactly the columns of :data:`distill.data.demo.EXAMPLE_FEATURES`: ``id``, ``prompt``,
``prompt_messages``, ``completion``. There is deliberately no ``answer_length``: in the demo it counts answer
*digits* (the task's reasoning steps), and a character count under the same name would mean something else.

Every row is validated before anything is returned or written; all problems (the first 20 shown) are raised
together as one :class:`DataValidationError`, one line per problem: ``<file>:<row>: <field>: <problem>``. Rows are
numbered as a user finds them in the file: the line number for ``.jsonl`` and ``.json`` (where the object
starts), the line number counting the header for ``.csv``, and the 1-based row position (row index + 1) for
``.parquet`` and hub splits.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict

from distill.data.demo import EXAMPLE_FEATURES, SPLITS, save_dataset, size_category, splits_yaml

__all__ = ["SUPPORTED_SUFFIXES", "DataValidationError", "load_user_dataset", "prepare_user_dataset"]

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
MAX_ERRORS_SHOWN = 20
DEFAULT_SPLIT_SIZES = {"train": 0.9, "validation": 0.05, "test": 0.05}
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                  "dev": "validation", "test": "test"}  # fmt: skip
_JSON_WS = re.compile(r"[ \t\n\r]*")

Rows = Iterator[tuple[int, Any]]


class DataValidationError(ValueError):
    """Invalid user data. ``errors``: the shown problem lines; ``total``: how many problems were found."""

    def __init__(self, errors: list[str], total: int) -> None:
        self.errors, self.total = errors, total
        more = f"\n  ... and {total - len(errors)} more" if total > len(errors) else ""
        super().__init__(f"invalid user data ({total} problem{'s' * (total != 1)}):\n  " + "\n  ".join(errors) + more)


class _Errors:
    """Collects problem lines, keeping the first ``cap`` and counting the rest."""

    def __init__(self, cap: int = MAX_ERRORS_SHOWN) -> None:
        self.lines: list[str] = []
        self.total, self.cap = 0, cap

    def add(self, file: str, row: int | None, field: str, problem: str) -> None:
        self.total += 1
        if len(self.lines) < self.cap:
            self.lines.append(f"{file}:{row}: {field}: {problem}" if row is not None else f"{file}: {field}: {problem}")

    def raise_if_any(self) -> None:
        if self.total:
            raise DataValidationError(self.lines, self.total)


def _read_text(path: Path, errors: _Errors) -> str | None:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        errors.add(str(path), data.count(b"\n", 0, e.start) + 1, "file", "not valid UTF-8")
        return None


def _read_jsonl(path: Path, errors: _Errors, text: str | None = None) -> Rows:
    text = _read_text(path, errors) if text is None else text
    for lineno, line in enumerate((text or "").split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            errors.add(str(path), lineno, "json", f"malformed JSON line: {e.msg} (column {e.colno})")


def _read_json(path: Path, errors: _Errors) -> Rows:
    """A JSON array of objects (row = line where each object starts), or JSON lines in a ``.json`` file."""
    text = _read_text(path, errors)
    if text is None:
        return
    i = _JSON_WS.match(text).end()
    if text[i : i + 1] != "[":
        yield from _read_jsonl(path, errors, text)
        return
    decoder, line, counted = json.JSONDecoder(), 1, 0
    i = _JSON_WS.match(text, i + 1).end()
    if text[i : i + 1] == "]":
        return
    while True:
        line, counted = line + text.count("\n", counted, i), i
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            errors.add(str(path), e.lineno, "json", f"malformed JSON: {e.msg} (column {e.colno})")
            return
        yield line, obj
        i = _JSON_WS.match(text, i).end()
        if text[i : i + 1] == ",":
            i = _JSON_WS.match(text, i + 1).end()
        elif text[i : i + 1] == "]" and not text[i + 1 :].strip():
            return
        else:
            errors.add(str(path), text.count("\n", 0, i) + 1, "json", "malformed JSON: expected ',' or ']'")
            return


def _read_csv(path: Path, errors: _Errors) -> Rows:
    """Rows of a CSV with a header line; row numbers are the line where a record starts (header = line 1)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                errors.add(str(path), 1, "header", "empty file (expected a header line)")
                return
            missing = [] if "messages" in header else [c for c in ("prompt", "completion") if c not in header]
            for col in missing:
                errors.add(str(path), 1, col, f"missing column (header: {', '.join(header)})")
            if missing:
                return
            start = reader.line_num + 1
            for record in reader:
                line, start = start, reader.line_num + 1
                if not record:
                    continue
                if len(record) > len(header):
                    errors.add(str(path), line, "row", f"{len(record)} fields but the header has {len(header)}")
                    continue
                yield line, {col: record[k] if k < len(record) else None for k, col in enumerate(header)}
        except (csv.Error, UnicodeDecodeError) as e:
            errors.add(str(path), reader.line_num, "csv", f"unreadable CSV: {e}")


def _read_parquet(path: Path, errors: _Errors) -> Rows:
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:
        errors.add(str(path), None, "file", f"unreadable parquet: {e}")
        return
    yield from enumerate(rows, 1)


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _string(value: Any, field: str, problems: list[tuple[str, str]], *, allow_empty: bool = False) -> str | None:
    if value is None:
        problems.append((field, "missing"))
    elif not isinstance(value, str):
        problems.append((field, f"expected a string, got {type(value).__name__} {value!r:.40}"))
    elif not allow_empty and not value.strip():
        problems.append((field, "empty or whitespace-only"))
    else:
        return value
    return None


def _messages(value: Any, problems: list[tuple[str, str]]) -> tuple[list[dict], str | None]:
    """Check a chat; return (prompt messages, completion)."""
    if not isinstance(value, list):
        problems.append(("messages", f"expected a list of messages, got {type(value).__name__}"))
        return [], None
    clean: list[dict] = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            problems.append((f"messages[{j}]", f"expected an object with 'role' and 'content', got {type(m).__name__}"))
            continue
        role = _string(m.get("role"), f"messages[{j}].role", problems)
        content = _string(m.get("content"), f"messages[{j}].content", problems, allow_empty=j < len(value) - 1)
        clean.append({"role": role, "content": content})
    if len(value) < 2:
        problems.append(("messages", "needs at least one prompt message followed by the assistant's reply"))
        return [], None
    last_role = clean[-1]["role"] if len(clean) == len(value) else None
    if last_role is not None and last_role != "assistant":
        problems.append(("messages", f"the last message must be the assistant's reply, got role {last_role!r}"))
    if clean[:-1] and all(m["content"] is not None and not m["content"].strip() for m in clean[:-1]):
        problems.append(("messages", "every prompt message is empty"))
    return clean[:-1], clean[-1]["content"] if len(clean) == len(value) else None


def _example(obj: Any, max_chars: int) -> tuple[dict | None, list[tuple[str, str]]]:
    """Validate one row; return (example in the output schema or None, problems as (field, problem))."""
    if not isinstance(obj, dict):
        return None, [("row", f"expected an object, got {type(obj).__name__}")]
    problems: list[tuple[str, str]] = []
    ex_id = obj.get("id")
    if ex_id is not None:
        _string(ex_id, "id", problems)
    if obj.get("messages") is not None:
        if obj.get("prompt") is not None or obj.get("completion") is not None:
            problems.append(("messages", "give either 'messages' or 'prompt'/'completion', not both"))
        prompt, (prompt_messages, completion) = "", _messages(obj["messages"], problems)
        prompt_chars = sum(len(m["content"] or "") for m in prompt_messages)
    else:
        prompt_messages = []
        prompt = _string(obj.get("prompt"), "prompt", problems)
        completion = _string(obj.get("completion"), "completion", problems)
        prompt_chars = len(prompt or "")
    n_chars = prompt_chars + len(completion or "")
    if n_chars > max_chars:
        problems.append(("row", f"{n_chars} characters (prompt + completion) exceed max_chars={max_chars}"))
    if problems:
        return None, problems
    return {"id": ex_id, "prompt": prompt, "prompt_messages": prompt_messages, "completion": completion}, []


def _split_name(name: str) -> str:
    split = _SPLIT_ALIASES.get(name.lower())
    if split is None:
        raise ValueError(f"unknown split {name!r}: expected one of {', '.join(_SPLIT_ALIASES)}")
    return split


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in SUPPORTED_SUFFIXES and not p.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"{path}: no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (expected {', '.join(SUPPORTED_SUFFIXES)})")
    return [path]


def _resolve(source: str | Path | Mapping[str, Any]) -> dict[str, list[Path]] | None:
    """Files grouped by split (one group ``"train"`` when there are no split names), or None for a hub name."""
    if isinstance(source, Mapping):
        groups: dict[str, list[Path]] = {}
        for name, value in source.items():
            paths = value if isinstance(value, list | tuple) else [value]
            groups.setdefault(_split_name(name), []).extend(f for p in paths for f in _files(Path(p)))
        return groups
    path = Path(source)
    if not path.exists():
        if isinstance(source, Path) or path.suffix in SUPPORTED_SUFFIXES or str(source).startswith((".", "/", "~")):
            raise FileNotFoundError(f"{path}: no such file or directory")
        return None
    files = _files(path)
    if not path.is_dir():
        return {"train": files}
    names = {f: _SPLIT_ALIASES.get(re.split(r"[-_.]", f.name, maxsplit=1)[0].lower()) for f in files}
    if all(split is None for split in names.values()):
        return {"train": files}
    if any(split is None for split in names.values()):
        odd = ", ".join(f.name for f, s in names.items() if s is None)
        raise ValueError(f"{path}: files {odd} are not named after a split (train/validation/test)")
    return {split: [f for f, s in names.items() if s == split] for split in SPLITS if split in names.values()}


def _split_indices(n: int, split_sizes: Mapping[str, float] | None, seed: int) -> dict[str, list[int]]:
    """Deterministic shuffle of ``range(n)`` cut by fractions; every split with a positive fraction gets a row."""
    fractions = dict(DEFAULT_SPLIT_SIZES if split_sizes is None else split_sizes)
    if set(fractions) - set(SPLITS) or any(not 0 <= f <= 1 for f in fractions.values()):
        raise ValueError(f"split_sizes must map train/validation/test to fractions in [0, 1], got {fractions}")
    if abs(sum(fractions.values()) - 1) > 1e-6 or fractions.get("train", 0) <= 0:
        raise ValueError(f"split_sizes must sum to 1 with a positive train fraction, got {fractions}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for split in ("validation", "test"):
        if fractions.get(split, 0) > 0:
            count = max(1, round(n * fractions[split]))
            out[split], start = sorted(order[start : start + count]), start + count
    if start >= n:
        raise ValueError(f"{n} rows are too few to split by {fractions}")
    return {"train": sorted(order[start:]), **out}


def _read_all(source: Any, max_chars: int) -> dict[str, list[dict]]:
    """All rows, validated, by split; raises DataValidationError listing every problem (the first 20)."""
    groups = _resolve(source)
    if groups is None:  # a hub dataset name
        hub = datasets.load_dataset(str(source))
        hub = hub if isinstance(hub, DatasetDict) else DatasetDict({"train": hub})
        sources = {_split_name(s): [(f"{source}[{s}]", enumerate(d, 1))] for s, d in hub.items()}
    else:
        sources = {s: [(str(f), f) for f in files] for s, files in groups.items()}
    errors, rows, seen = _Errors(), {}, {}
    for split, items in sources.items():
        rows[split] = []
        for label, item in items:
            n_errors, row = errors.total, 0
            for row, obj in _READERS[item.suffix](item, errors) if isinstance(item, Path) else item:
                example, problems = _example(obj, max_chars)
                for field, problem in problems:
                    errors.add(label, row, field, problem)
                if example is None:
                    continue
                if example["id"] is not None:
                    if example["id"] in seen:
                        errors.add(label, row, "id", f"duplicate id {example['id']!r} (also at {seen[example['id']]})")
                        continue
                    seen[example["id"]] = f"{label}:{row}"
                rows[split].append(example)
            if row == 0 and errors.total == n_errors:
                errors.add(label, None, "file", "no rows")
    errors.raise_if_any()
    return rows


def load_user_dataset(
    source: str | Path | Mapping[str, Any],
    *,
    max_chars: int = 8192,
    split_sizes: Mapping[str, float] | None = None,
    seed: int = 0,
) -> DatasetDict:
    """Load, validate and normalise user data into a DatasetDict (columns of ``EXAMPLE_FEATURES``).

    A source with one split (a file, a directory whose file names are not split names, a one-entry dict) is cut
    into train/validation/test by ``split_sizes`` fractions (default 0.9/0.05/0.05) after a shuffle with
    ``seed``; rows keep their file order inside a split. Rows without an id get ``"<split>-<position>"``
    (e.g. ``"train-000017"``, made unique against the given ids). Raises :class:`DataValidationError`.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    rows = _read_all(source, max_chars)
    if len(rows) == 1:
        (only,) = rows.values()
        rows = {s: [only[i] for i in idx] for s, idx in _split_indices(len(only), split_sizes, seed).items()}
    taken = {r["id"] for split_rows in rows.values() for r in split_rows if r["id"] is not None}
    out = {}
    for split in [s for s in SPLITS if s in rows]:
        examples = [dict(r) for r in rows[split]]
        for i, example in enumerate(examples):
            if example["id"] is None:
                new_id, k = f"{split}-{i:06d}", 1
                while new_id in taken:
                    new_id, k = f"{split}-{i:06d}-{k}", k + 1
                example["id"] = new_id
                taken.add(new_id)
        columns = {name: [e[name] for e in examples] for name in EXAMPLE_FEATURES}
        out[split] = Dataset.from_dict(columns, features=EXAMPLE_FEATURES, split=split)
    return DatasetDict(out)


def user_dataset_card(source: Any, dataset: DatasetDict) -> str:
    """A short generic Hugging Face dataset card for prepared user data."""
    total = sum(len(d) for d in dataset.values())
    sizes = ", ".join(f"{s}: {len(d)}" for s, d in dataset.items())
    name = Path(source).name if isinstance(source, str | Path) else "user files"
    return (
        f"---\npretty_name: Distillation data from {name}\n"
        f"task_categories:\n  - text-generation\nsize_categories:\n  - {size_category(total)}\n"
        f"{splits_yaml(dataset)}---\n\n# Distillation data\n\n"
        f"Prepared by `distill.data.load.prepare_user_dataset` from `{name}` ({sizes}). Columns: `id`, `prompt` "
        "(plain-text prompt, or empty), `prompt_messages` (chat prompt, or empty), `completion`.\n"
    )


def prepare_user_dataset(source: str | Path | Mapping[str, Any], out_path: str | Path, **kwargs: Any) -> DatasetDict:
    """Validate and load ``source`` (see :func:`load_user_dataset`), then save it atomically to ``out_path``.

    On a validation error nothing is written and an existing ``out_path`` is left untouched.
    """
    dataset = load_user_dataset(source, **kwargs)
    save_dataset(dataset, out_path, card=user_dataset_card(source, dataset))
    return dataset
