"""The demo task (affine iteration mod 10, worked steps): determinism, format, verifier, card, atomic save,
tokenisation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from datasets import DatasetDict, load_from_disk
from pydantic import ValidationError

from distill.data.demo import (
    DemoConfig,
    check_answer,
    dataset_card,
    format_completion,
    make_demo_dataset,
    save_dataset,
    size_category,
    solve,
)
from distill.data.tokenize import IGNORE_INDEX, encode_completion, encode_example, encode_prompt

SMALL = DemoConfig(seed=3, train_size=300, validation_size=40, test_size=60, min_length=2, max_length=9)
PROMPT_RE = re.compile(r"n=([1-9]\d*) a=(\d) b=(\d) x=(\d)\n=")
STEP_RE = re.compile(r"(\d+):(\d)\*(\d)=(\d)\+(\d)=(\d)")


@pytest.fixture(scope="module")
def small() -> DatasetDict:
    return make_demo_dataset(SMALL)


def test_format_example_from_the_spec() -> None:
    assert solve("n=3 a=6 b=7 x=2\n=") == " 3:6*2=2+7=9 2:6*9=4+7=1 1:6*1=6+7=3"
    assert format_completion(3, 6, 7, 2) == " 3:6*2=2+7=9 2:6*9=4+7=1 1:6*1=6+7=3"
    assert format_completion(1, 0, 9, 5) == " 1:0*5=0+9=9"
    assert solve("n=12 a=1 b=1 x=0\n=").split()[-1] == "1:1*1=1+1=2"  # x counts up mod 10: 1, 2, ..., 0, 1, 2


def test_splits_columns_and_ids(small: DatasetDict) -> None:
    assert list(small) == ["train", "validation", "test"]
    assert [len(small[s]) for s in small] == [300, 40, 60]
    for split, d in small.items():
        assert d.column_names == ["id", "prompt", "prompt_messages", "completion", "answer_length"]
        assert d["id"][:2] == [f"{split}-000000", f"{split}-000001"]
        assert all(m == [] for m in d["prompt_messages"])


def test_deterministic_and_seed_dependent(small: DatasetDict, tmp_path: Path) -> None:
    again = make_demo_dataset(SMALL)
    for split in small:
        assert small[split].to_dict() == again[split].to_dict()
        assert small[split]._fingerprint == again[split]._fingerprint
    small.save_to_disk(str(tmp_path / "a"))
    again.save_to_disk(str(tmp_path / "b"))
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = make_demo_dataset(SMALL.model_copy(update={"seed": 4}))
    assert other["train"]["prompt"] != small["train"]["prompt"]


def test_prompts_unique_across_splits(small: DatasetDict) -> None:
    prompts = [p for d in small.values() for p in d["prompt"]]
    assert len(prompts) == len(set(prompts))


def test_unique_even_when_the_prompt_space_is_nearly_full() -> None:
    config = DemoConfig(train_size=1900, validation_size=50, test_size=50, min_length=1, max_length=2)  # 2000 exist
    prompts = [p for d in make_demo_dataset(config).values() for p in d["prompt"]]
    assert len(set(prompts)) == 2000
    with pytest.raises(ValidationError, match="distinct prompts"):
        DemoConfig(train_size=1950, validation_size=50, test_size=1, min_length=1, max_length=2)


def test_format_is_exact_and_answers_check(small: DatasetDict) -> None:
    for d in small.values():
        for row in d:
            n, a, b, x = map(int, PROMPT_RE.fullmatch(row["prompt"]).groups())
            assert n == row["answer_length"] and row["completion"].startswith(" ")
            steps = row["completion"][1:].split(" ")
            assert len(steps) == n
            for i, step in enumerate(steps):  # independent re-derivation of every step
                k, a_, x_, m, b_, y = map(int, STEP_RE.fullmatch(step).groups())
                assert (k, a_, b_, x_) == (n - i, a, b, x)
                assert m == a * x % 10 and y == (m + b) % 10
                x = y
            assert check_answer(row["prompt"], row["completion"])


def test_answer_length_range(small: DatasetDict) -> None:
    lengths = {n for d in small.values() for n in d["answer_length"]}
    assert lengths == set(range(SMALL.min_length, SMALL.max_length + 1))  # 400 draws hit all 8 lengths


def test_check_answer() -> None:
    prompt = "n=2 a=6 b=7 x=2\n="
    assert check_answer(prompt, " 2:6*2=2+7=9 1:6*9=4+7=1")
    assert check_answer("\n" + prompt + " ", "2:6*2=2+7=9 1:6*9=4+7=1 \n")  # surrounding whitespace is fine
    assert not check_answer(prompt, " 2:6*2=2+7=9 1:6*9=4+7=2")  # wrong digit
    assert not check_answer(prompt, " 2:6*2=2+7=9")  # too short
    assert not check_answer(prompt, " 2:6*2=2+7=9 1:6*9=4+7=1 0:6*1=6+7=3")  # too long
    assert not check_answer(prompt, " 2:6*2=2+7=9  1:6*9=4+7=1")  # inner spacing must be exact
    assert not check_answer(prompt, " 1")
    assert not check_answer(prompt, "")
    assert not check_answer("what is 2+2?", " 4")
    for bad in ("n=2 a=12 b=7 x=2\n=", "n=0 a=1 b=7 x=2\n=", "cumsum: 1 2\n="):
        with pytest.raises(ValueError, match="not a demo prompt"):
            solve(bad)


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="min_length"):
        DemoConfig(min_length=5, max_length=4)
    with pytest.raises(ValidationError, match="train_size"):
        DemoConfig(train_size=0)
    with pytest.raises(ValidationError, match="extra"):
        DemoConfig(sede=1)


def test_dataset_card(small: DatasetDict) -> None:
    card = dataset_card(SMALL, small)
    header, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert card.startswith("---\n")
    assert "pretty_name:" in header
    assert "task_categories:\n  - text-generation" in header
    assert "size_categories:\n  - n<1K" in header
    for split, n in (("train", 300), ("validation", 40), ("test", 60)):
        assert f"- split: {split}\n        path: {split}/*.arrow" in header
        assert f"- name: {split}\n      num_examples: {n}" in header
    assert "seed 3" in body and "train: 300, validation: 40, test: 60" in body
    assert repr(small["train"][0]["prompt"]) in body and repr(small["train"][0]["completion"]) in body
    assert "[2, 9]" in body
    assert [size_category(n) for n in (999, 1000, 4600, 10_000, 2_500_000)] == [
        "n<1K",
        "1K<n<10K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
    ]


def test_save_dataset_roundtrip_and_replace(small: DatasetDict, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    save_dataset(small, out, card="first")
    assert (out / "README.md").read_text() == "first"
    tiny = make_demo_dataset(DemoConfig(train_size=5, validation_size=1, test_size=1))
    save_dataset(tiny, out, card=dataset_card(DemoConfig(), tiny))
    loaded = load_from_disk(str(out))
    assert loaded["train"].to_dict() == tiny["train"].to_dict()
    assert (out / "README.md").read_text().startswith("---\npretty_name:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temp or backup folders left


def test_save_dataset_is_atomic_on_failure(small: DatasetDict, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "demo"
    save_dataset(small, out, card="old card")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def half_written(self, path, **kwargs):
        (Path(path) / "train").mkdir(parents=True)
        (Path(path) / "train" / "data-00000-of-00001.arrow").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(DatasetDict, "save_to_disk", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(small, out, card="new card")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    with pytest.raises(OSError, match="disk full"):
        save_dataset(small, tmp_path / "fresh", card=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no half-written "fresh"


@pytest.mark.parametrize("fixture", ["bpe_tokenizer", "unigram_tokenizer"])
def test_examples_tokenise(small: DatasetDict, fixture: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(fixture)
    for row in small["validation"].select(range(10)):
        prompt = row["prompt_messages"] or row["prompt"]
        enc = encode_example(tokenizer, prompt, row["completion"])
        prompt_ids = encode_prompt(tokenizer, prompt)
        completion_ids = encode_completion(tokenizer, row["completion"])
        assert enc.prompt_length == len(prompt_ids)
        assert enc.input_ids == prompt_ids + completion_ids
        assert enc.labels[: enc.prompt_length] == [IGNORE_INDEX] * enc.prompt_length
        assert enc.labels[enc.prompt_length :] == completion_ids
        assert completion_ids[-1] == tokenizer.eos_token_id
        answer = tokenizer.decode(completion_ids[:-1])
        assert check_answer(row["prompt"], answer)
        assert answer.split() == row["completion"].split()


def test_save_dataset_restores_the_old_folder_if_the_swap_fails(
    small: DatasetDict, tmp_path: Path, monkeypatch
) -> None:
    import distill.data.demo as demo

    out = tmp_path / "demo"
    save_dataset(small, out, card="old card")
    real_replace = demo.os.replace

    def flaky_replace(src, dst):
        if Path(dst) == out and Path(src).name.startswith(".demo.tmp-"):  # moving the new folder into place
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(demo.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_dataset(small, out, card="new card")
    assert (out / "README.md").read_text() == "old card"
    assert load_from_disk(str(out))["test"].to_dict() == small["test"].to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
