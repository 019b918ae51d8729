"""Tests of `distill.evaluation`'s runner end to end on tiny random models, and its JSON/PNG reports."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill.data.tokenize import encode_example, encode_prompt
from distill.evaluation import (
    evaluate_model,
    plot_accuracy_by_length,
    write_report,
)
from distill.rollout import generate

# ------------------------------------------------------------------------------------------------------ runner


def _tiny_llama(tokenizer, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def student(unigram_tokenizer) -> LlamaForCausalLM:
    """A random student that never generates byte-fallback pieces or specials other than EOS (so its texts are
    valid UTF-8 and re-tokenise for another tokenizer)."""
    model = _tiny_llama(unigram_tokenizer, seed=0)
    vocab = unigram_tokenizer.convert_ids_to_tokens(list(range(len(unigram_tokenizer))))
    model.generation_config.suppress_tokens = [
        i
        for i, piece in enumerate(vocab)
        if (piece.startswith("<0x") or i in unigram_tokenizer.all_special_ids) and i != unigram_tokenizer.eos_token_id
    ]
    return model


ROWS = [
    {
        "id": "r0",
        "prompt": "Alice reads the book\n",
        "prompt_messages": [],
        "completion": "the cat",
        "answer_length": 1,
    },
    {"id": "r1", "prompt": "Bob writes a sentence\n", "prompt_messages": [], "completion": "a dog", "answer_length": 2},
    {"id": "r2", "prompt": "Carol counts numbers 12\n", "prompt_messages": [], "completion": "3 4", "answer_length": 2},
    {
        "id": "r3",
        "prompt": "Dave",
        "prompt_messages": [{"role": "user", "content": "Dave learns"}],
        "completion": "the river",
        "answer_length": 3,
    },
    {"id": "r4", "prompt": "Eve predicts\n", "prompt_messages": [], "completion": "every word", "answer_length": 3},
    {"id": "r5", "prompt": "Paris is a city\n", "prompt_messages": [], "completion": "London", "answer_length": 3},
]
MAX_NEW, BATCH = 6, 4


@pytest.fixture(scope="module")
def dataset():
    from datasets import Dataset

    return Dataset.from_list(ROWS)


@pytest.fixture(scope="module")
def generations(student, unigram_tokenizer) -> list[str]:
    tok = unigram_tokenizer
    prompts = [encode_prompt(tok, row["prompt_messages"] or row["prompt"]) for row in ROWS]
    rollouts = generate(
        student,
        prompts,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        max_new_tokens=MAX_NEW,
        batch_size=BATCH,
    )
    return [tok.decode(ids, skip_special_tokens=True) for ids in rollouts.completions]


@pytest.fixture(scope="module")
def base_result(student, unigram_tokenizer, dataset, generations, tmp_path_factory) -> dict:
    model_dir = tmp_path_factory.mktemp("student")
    student.save_pretrained(model_dir)
    known_prompt, known_completion = ROWS[2]["prompt"], generations[2]
    return evaluate_model(
        student,
        unigram_tokenizer,
        dataset,
        check=lambda p, c: p == known_prompt and c == known_completion,
        max_new_tokens=MAX_NEW,
        batch_size=BATCH,
        model_dir=model_dir,
    ) | {"_model_dir": str(model_dir)}


def test_runner_scores(base_result, generations):
    r = base_result
    assert r["schema"] == 1 and r["num_examples"] == 6
    assert r["exact_match"] == pytest.approx(1 / 6)  # the checker accepts exactly row 2's own generation
    assert r["length_key"] == "answer_length"
    assert r["accuracy_by_length"] == {"1": 0.0, "2": 0.5, "3": 0.0}
    assert r["count_by_length"] == {"1": 1, "2": 2, "3": 3}
    words = [t.split() for t in generations]
    unigrams = [w for ws in words for w in ws]
    bigrams = [tuple(ws[i : i + 2]) for ws in words for i in range(len(ws) - 1)]
    assert r["distinct_1"] == pytest.approx(len(set(unigrams)) / len(unigrams))
    assert r["distinct_2"] == pytest.approx(len(set(bigrams)) / len(bigrams) if bigrams else 0.0)
    assert 0 < r["generated_tokens"] <= 6 * MAX_NEW and r["tokens_per_second"] > 0
    assert 0.0 <= r["finished_fraction"] <= 1.0
    assert all(r[k] is None for k in r if k.startswith("teacher_"))
    json.dumps(r)  # JSON-able as is


def test_runner_size(base_result, student):
    r = base_result
    params = list(student.parameters())
    assert r["num_parameters"] == sum(p.numel() for p in params)
    assert r["param_bytes"] == sum(p.numel() * 4 for p in params)
    disk = sum(f.stat().st_size for f in Path(r["_model_dir"]).glob("*.safetensors"))
    assert r["size_on_disk_bytes"] == disk > 0


def test_runner_perplexity_matches_unbatched_reference(base_result, student, unigram_tokenizer):
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for row in ROWS:
            e = encode_example(unigram_tokenizer, row["prompt_messages"] or row["prompt"], row["completion"])
            logits = student(input_ids=torch.tensor([e.input_ids])).logits[0, e.prompt_length - 1 : -1]
            target = torch.tensor(e.input_ids[e.prompt_length :])
            nll += float(torch.nn.functional.cross_entropy(logits.double(), target, reduction="sum"))
            tokens += len(target)
    assert base_result["reference_tokens"] == tokens
    assert base_result["mean_nll"] == pytest.approx(nll / tokens, rel=1e-5)
    assert base_result["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def test_runner_without_answer_length_and_limit(student, unigram_tokenizer):
    rows = [{k: v for k, v in row.items() if k != "answer_length"} for row in ROWS]
    r = evaluate_model(
        student, unigram_tokenizer, rows, check=lambda p, c: True, max_new_tokens=2, batch_size=2, limit=3
    )
    assert r["num_examples"] == 3 and r["exact_match"] == 1.0
    assert r["length_key"] == "completion_chars"
    assert r["count_by_length"] == {"7": 1, "5": 1, "3": 1}  # len("the cat"), len("a dog"), len("3 4")


def test_runner_teacher_same_tokenizer(student, unigram_tokenizer, dataset):
    teacher = copy.deepcopy(student)
    r = evaluate_model(
        student,
        unigram_tokenizer,
        dataset,
        check=lambda p, c: False,
        teacher=teacher,
        teacher_tokenizer=unigram_tokenizer,
        max_new_tokens=MAX_NEW,
        batch_size=BATCH,
    )
    assert r["teacher_comparison"] == "same_tokenizer"
    assert r["teacher_units"] == r["generated_tokens"] and r["teacher_skipped"] == 0
    assert r["teacher_kl"] == pytest.approx(0.0, abs=1e-9)
    assert r["teacher_top1_agreement"] == 1.0
    assert r["teacher_tail_coverage"] == pytest.approx(1.0, abs=1e-12)
    assert r["teacher_vocab_overlap"] == 1.0
    assert 0.0 < r["teacher_tail_mass"] < 1.0


def test_runner_teacher_cross_tokenizer(student, tokenizer_pair, dataset):
    student_tok, teacher_tok = tokenizer_pair
    teacher = _tiny_llama(teacher_tok, seed=1)
    r = evaluate_model(
        student,
        student_tok,
        dataset,
        check=lambda p, c: False,
        teacher=teacher,
        teacher_tokenizer=teacher_tok,
        max_new_tokens=MAX_NEW,
        batch_size=BATCH,
    )
    assert r["teacher_comparison"] == "span_groups_matched_vocab"
    assert r["teacher_skipped"] == 0 and r["teacher_units"] > 0
    assert math.isfinite(r["teacher_kl"]) and r["teacher_kl"] >= 0.0
    assert 0.0 <= r["teacher_top1_agreement"] <= 1.0
    assert 0.0 < r["teacher_vocab_overlap"] < 1.0
    assert 0.0 <= r["teacher_tail_coverage"] <= 1.0 and 0.0 < r["teacher_tail_mass"] <= 1.0


def test_runner_rejects_bad_rows(student, unigram_tokenizer):
    with pytest.raises(ValueError, match=r"row 1 .*'completion'"):
        evaluate_model(
            student,
            unigram_tokenizer,
            [ROWS[0], {"id": "x", "prompt": "p"}],
            check=lambda p, c: True,
            max_new_tokens=2,
            batch_size=2,
        )
    with pytest.raises(ValueError, match="no rows"):
        evaluate_model(
            student, unigram_tokenizer, ROWS, check=lambda p, c: True, max_new_tokens=2, batch_size=2, limit=0
        )


# ----------------------------------------------------------------------------------------------------- reports


def test_write_report(tmp_path, base_result):
    path = tmp_path / "eval" / "student.json"
    path.parent.mkdir()
    path.write_text("old")
    write_report({**base_result, "nan": float("nan"), "by": {1: 0.5}}, path)
    loaded = json.loads(path.read_text())
    assert loaded["schema"] == 1 and loaded["exact_match"] == pytest.approx(1 / 6)
    assert loaded["nan"] is None and loaded["by"] == {"1": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["student.json"]  # no temporary file left behind


def test_plot_accuracy_by_length(tmp_path, base_result):
    results = {
        "teacher": {"accuracy_by_length": {"1": 1.0, "2": 0.9, "3": 0.7}, "length_key": "answer_length"},
        "bridge": {"accuracy_by_length": {1: 0.9, 2: 0.6, 3: 0.4}},
        "student": base_result,
    }
    path = plot_accuracy_by_length(results, tmp_path / "plots" / "by_length.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["by_length.png"]
    with pytest.raises(ValueError, match="no results"):
        plot_accuracy_by_length({}, tmp_path / "empty.png")
