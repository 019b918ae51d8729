"""User data: every format in both row forms, splitting, ids, and one test per validation error."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_from_disk

from distill.data.demo import EXAMPLE_FEATURES
from distill.data.load import DataValidationError, load_user_dataset, prepare_user_dataset

PLAIN = [{"id": f"p{i}", "prompt": f"Question {i}?", "completion": f" Answer {i}."} for i in range(20)]
CHAT = [
    {
        "id": f"c{i}",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"Answer {i}."},
        ],
    }
    for i in range(20)
]
ALL = {"train": 1.0, "validation": 0.0, "test": 0.0}  # keep every row in train, in file order


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows: list[Any]) -> Path:
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


WRITERS = {"jsonl": write_jsonl, "json": write_json, "parquet": write_parquet, "csv": write_csv}


def problems(exc: pytest.ExceptionInfo[DataValidationError]) -> list[str]:
    return exc.value.errors


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_plain_rows_in_every_format(tmp_path: Path, fmt: str) -> None:
    path = WRITERS[fmt](tmp_path / f"data.{fmt}", PLAIN)
    ds = load_user_dataset(path, split_sizes=ALL)
    assert list(ds) == ["train"]
    assert ds["train"].features == EXAMPLE_FEATURES
    assert ds["train"].to_list() == [{**r, "prompt_messages": []} for r in PLAIN]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_chat_rows(tmp_path: Path, fmt: str) -> None:
    path = WRITERS[fmt](tmp_path / f"chat.{fmt}", CHAT)
    rows = load_user_dataset(path, split_sizes=ALL)["train"].to_list()
    assert len(rows) == 20
    assert rows[3] == {
        "id": "c3",
        "prompt": "",
        "prompt_messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question 3?"}],
        "completion": "Answer 3.",
    }


def test_default_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(100)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = load_user_dataset(path)
    assert {s: len(d) for s, d in ds.items()} == {"train": 90, "validation": 5, "test": 5}
    assert ds["train"]["id"][:2] == ["train-000000", "train-000001"]
    assert ds["test"]["id"] == [f"test-{i:06d}" for i in range(5)]
    prompts = [p for d in ds.values() for p in d["prompt"]]
    assert sorted(prompts) == sorted(r["prompt"] for r in rows)
    again = load_user_dataset(path)
    assert all(ds[s].to_list() == again[s].to_list() for s in ds)
    assert load_user_dataset(path, seed=1)["test"]["prompt"] != ds["test"]["prompt"]
    with pytest.raises(ValueError, match="split_sizes"):
        load_user_dataset(path, split_sizes={"train": 0.5, "test": 0.2})


def test_directory_of_split_files_and_dict_source(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", PLAIN[:10])
    write_parquet(data / "validation.parquet", PLAIN[10:15])
    write_csv(data / "test.csv", [{"prompt": "q", "completion": "a"}])  # no id column: generated
    ds = load_user_dataset(data)
    assert {s: len(d) for s, d in ds.items()} == {"train": 10, "validation": 5, "test": 1}
    assert ds["test"]["id"] == ["test-000000"]
    by_dict = load_user_dataset({"train": data / "train.jsonl", "val": str(data / "validation.parquet")})
    assert {s: len(d) for s, d in by_dict.items()} == {"train": 10, "validation": 5}


def test_generated_ids_avoid_given_ids(tmp_path: Path) -> None:
    rows = [{"id": "train-000001", "prompt": "a", "completion": "b"}, PLAIN[0], {"prompt": "c", "completion": "d"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    ids = load_user_dataset(path, split_sizes=ALL)["train"]["id"]
    assert ids == ["train-000001", "p0", "train-000002"]
    path2 = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "x", "completion": "y"}, {**PLAIN[0], "id": "train-000000"}])
    assert load_user_dataset(path2, split_sizes=ALL)["train"]["id"] == ["train-000000-1", "train-000000"]


def test_prepare_writes_atomically_and_not_on_errors(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    good = write_jsonl(tmp_path / "good.jsonl", PLAIN)
    ds = prepare_user_dataset(good, out, split_sizes=ALL)
    assert load_from_disk(str(out))["train"].to_list() == ds["train"].to_list()
    assert (out / "README.md").read_text().startswith("---\npretty_name:")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q"}])
    with pytest.raises(DataValidationError):
        prepare_user_dataset(bad, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(DataValidationError):
        prepare_user_dataset(bad, tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "prepared"]


# ---- one test per validation error: the message names the file and the row a user sees ----


def test_missing_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [PLAIN[0], {"id": "x", "prompt": "q"}])
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc) == [f"{path}:2: completion: missing"]


def test_non_string_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [PLAIN[0], PLAIN[1], {"prompt": 42, "completion": "a"}])
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc) == [f"{path}:3: prompt: expected a string, got int 42"]
    assert f"{path}:3: prompt:" in str(exc.value)


def test_non_string_field_in_parquet_names_the_row(tmp_path: Path) -> None:
    rows = [{"prompt": str(i), "completion": "a"} for i in range(3)] + [{"prompt": None, "completion": "a"}]
    path = write_parquet(tmp_path / "d.parquet", rows)
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc) == [f"{path}:4: prompt: missing"]


def test_empty_and_whitespace_only_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [PLAIN[0], {"id": "e", "prompt": "  \t", "completion": ""}])
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc) == [  # line 1 is the header
        f"{path}:3: prompt: empty or whitespace-only",
        f"{path}:3: completion: empty or whitespace-only",
    ]


def test_csv_rows_are_numbered_by_line_even_with_multiline_fields(tmp_path: Path) -> None:
    rows = [{"prompt": "line one\nline two", "completion": "a"}, {"prompt": "q", "completion": " "}]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc) == [f"{path}:4: completion: empty or whitespace-only"]


def test_csv_missing_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [{"question": "q", "completion": "a"}])
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc) == [f"{path}:1: prompt: missing column (header: question, completion)"]


def test_messages_not_a_list(tmp_path: Path) -> None:
    path = write_json(tmp_path / "d.json", [CHAT[0], {"messages": "hello"}])
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    starts = [n for n, line in enumerate(path.read_text().split("\n"), 1) if line == "  {"]
    start = starts[1]  # the line where the second object starts
    assert start > 10
    assert problems(exc) == [f"{path}:{start}: messages: expected a list of messages, got str"]


def test_message_without_role_or_content(tmp_path: Path) -> None:
    bad = {"messages": [{"content": "hi"}, {"role": "assistant"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT[0], bad])
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc) == [f"{path}:2: messages[0].role: missing", f"{path}:2: messages[1].content: missing"]


def test_last_message_not_from_the_assistant(tmp_path: Path) -> None:
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}
    path = write_parquet(tmp_path / "d.parquet", [*CHAT[:2], bad])
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc) == [f"{path}:3: messages: the last message must be the assistant's reply, got role 'user'"]


def test_row_longer_than_max_chars(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q" * 60, "completion": "a" * 41}, *CHAT[:1]])
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path, max_chars=100)
    assert problems(exc) == [f"{path}:1: row: 101 characters (prompt + completion) exceed max_chars=100"]


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    first = write_jsonl(tmp_path / "train.jsonl", PLAIN[:5])
    second = write_csv(tmp_path / "test.csv", [PLAIN[7], PLAIN[2]])
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(tmp_path)
    assert problems(exc) == [f"{second}:3: id: duplicate id 'p2' (also at {first}:3)"]


def test_malformed_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", PLAIN[:3])
    lines = path.read_text().split("\n")
    lines.insert(1, '{"prompt": "q", "completion": ')
    path.write_text("\n".join(lines))
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert len(problems(exc)) == 1
    assert problems(exc)[0].startswith(f"{path}:2: json: malformed JSON line:")


def test_malformed_json_array(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "c" "completion": "d"}\n]\n')
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc)[0].startswith(f"{path}:3: json: malformed JSON:")


def test_errors_are_collected_and_capped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "", "completion": "a"}] * 30)
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert exc.value.total == 30 and len(problems(exc)) == 20
    assert problems(exc)[-1] == f"{path}:20: prompt: empty or whitespace-only"
    assert "... and 10 more" in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_missing_file_is_not_taken_for_a_hub_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_user_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError):
        load_user_dataset(str(tmp_path / "nope.parquet"))


def test_file_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataValidationError) as exc:
        load_user_dataset(path)
    assert problems(exc) == [f"{path}: file: no rows"]
