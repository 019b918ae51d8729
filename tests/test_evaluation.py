"""Tests of `distill.evaluation`: metrics against hand-computed values, the teacher comparison, the runner end to
end on tiny random models, and the JSON/PNG reports."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill.align import SpanAlignment, VocabMap, align_spans, merge_span_log_probs
from distill.data.tokenize import encode_example, encode_prompt
from distill.evaluation import (
    METRIC_NAMES,
    cross_vocab_units,
    evaluate_model,
    load_metric,
    plot_accuracy_by_length,
    same_vocab_units,
    write_report,
)
from distill.evaluation.compare import _chain_rule_parts
from distill.rollout import generate

# ---------------------------------------------------------------------------------------------------- metrics


def test_exact_match_strings_and_verdicts():
    metric = load_metric("exact_match")
    # " 42 " == "42" after stripping; "4 2" != "42"; "x" == "x"; "" != "y"  -> 2 / 4
    got = metric.compute(predictions=[" 42 ", "4 2", "x", ""], references=["42", "42", "x\n", "y"])
    assert got == {"exact_match": 0.5}
    assert metric.compute(predictions=[True, False, True], references=[True, True, True]) == {"exact_match": 2 / 3}


def test_accuracy_by_length():
    got = load_metric("accuracy_by_length").compute(correct=[True, False, True, True, False], lengths=[3, 1, 3, 2, 3])
    # length 1: 0/1, length 2: 1/1, length 3: 2/3; overall 3/5
    assert got["by_length"] == {1: 0.0, 2: 1.0, 3: pytest.approx(2 / 3)}
    assert got["counts"] == {1: 1, 2: 1, 3: 3}
    assert list(got["by_length"]) == [1, 2, 3]
    assert got["accuracy"] == pytest.approx(0.6)


def test_perplexity_from_nll():
    metric = load_metric("perplexity_from_nll")
    got = metric.compute(nll=[2.0, 4.0, 0.0], num_tokens=[1, 3, 0])  # (2 + 4) / 4 tokens = 1.5 nats
    assert got["mean_nll"] == pytest.approx(1.5)
    assert got["perplexity"] == pytest.approx(math.exp(1.5))
    assert got["num_tokens"] == 4
    assert metric.compute(nll=[1e4], num_tokens=[1])["perplexity"] == math.inf
    with pytest.raises(ValueError, match="zero tokens"):
        metric.compute(nll=[0.0], num_tokens=[0])


def test_distinct_n():
    metric = load_metric("distinct_n")
    # words: [a b a] [b] -> unigrams a,b,a,b: 2 distinct / 4; bigrams (a b),(b a): 2 / 2
    assert metric.compute(predictions=["a b a", "b"]) == {"distinct_1": 0.5, "distinct_2": 1.0}
    # token ids: [1 2 1 2] [] -> unigrams 2/4; bigrams (1 2),(2 1),(1 2): 2/3; trigrams (1 2 1),(2 1 2): 2/2
    got = metric.compute(predictions=[[1, 2, 1, 2], []], orders=(1, 2, 3))
    assert got == {"distinct_1": 0.5, "distinct_2": pytest.approx(2 / 3), "distinct_3": 1.0}
    # token strings; every prediction shorter than 2 -> no bigram at all -> documented 0.0
    assert metric.compute(predictions=[["x"], ["x"], ["y"]]) == {"distinct_1": pytest.approx(2 / 3), "distinct_2": 0.0}
    with pytest.raises(ValueError, match="orders"):
        metric.compute(predictions=["a"], orders=(0,))


def test_teacher_agreement():
    metric = load_metric("teacher_agreement")
    got = metric.compute(kl=[0.1, 0.3, 0.0, 0.4], top1_agree=[True, False, True, True])
    assert got == {"mean_kl": pytest.approx(0.2), "top1_agreement": 0.75, "num_units": 4}
    with pytest.raises(ValueError, match=">= 0"):
        metric.compute(kl=[-0.5], top1_agree=[True])


def test_tail_coverage():
    metric = load_metric("tail_coverage")
    # pooled: (0.1 + 0.2 + 0) / (0.2 + 0.2 + 0.1) = 0.6; mean tail mass 0.5 / 3
    got = metric.compute(covered=[0.1, 0.2, 0.0], total=[0.2, 0.2, 0.1])
    assert got == {"tail_coverage": pytest.approx(0.6), "mean_tail_mass": pytest.approx(0.5 / 3), "num_units": 3}
    assert metric.compute(covered=[0.0], total=[0.0])["tail_coverage"] == 1.0  # one-hot teacher: nothing to cover
    with pytest.raises(ValueError, match="exceeds"):
        metric.compute(covered=[0.3], total=[0.2])


@pytest.mark.parametrize(
    ("name", "inputs"),
    [
        ("exact_match", {"predictions": [], "references": []}),
        ("accuracy_by_length", {"correct": [], "lengths": []}),
        ("perplexity_from_nll", {"nll": [], "num_tokens": []}),
        ("distinct_n", {"predictions": []}),
        ("teacher_agreement", {"kl": [], "top1_agree": []}),
        ("tail_coverage", {"covered": [], "total": []}),
    ],
)
def test_empty_inputs_raise(name, inputs):
    with pytest.raises(ValueError, match=f"{name}: no inputs"):
        load_metric(name).compute(**inputs)


def test_different_lengths_raise():
    with pytest.raises(ValueError, match="different lengths"):
        load_metric("exact_match").compute(predictions=["a", "b"], references=["a"])


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("bleu")


def test_metrics_load_by_local_path_offline(tmp_path):
    """In a fresh process with the Hub switched off and its endpoint unreachable, every metric loads and runs."""
    script = (
        "import evaluate\n"
        "from distill.evaluation import METRIC_NAMES, load_metric, metric_path\n"
        "for name in METRIC_NAMES:\n"
        "    m = load_metric(name)\n"
        "    assert isinstance(m, evaluate.Metric) and m.info.description and m.info.features, name\n"
        "    assert (metric_path(name) / f'{name}.py').is_file()\n"
        "print(load_metric('exact_match').compute(predictions=['a'], references=['a'])['exact_match'])\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf"),
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1.0"
    assert len(METRIC_NAMES) == 6


# ------------------------------------------------------------------------------------------ teacher comparison


def _logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


def test_same_vocab_units_by_hand():
    p_t, p_s = [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]
    student = _logits(p_s, [0.1, 0.1, 0.8])
    teacher = torch.cat([_logits(p_t, [0.1, 0.1, 0.8]), torch.full((2, 1), -1e9, dtype=torch.float64)], dim=-1)
    got = same_vocab_units(student, teacher)  # the teacher's extra (padded) column is ignored
    kl = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.5) + 0.2 * math.log(0.2 / 0.3)
    assert got.kl == pytest.approx([kl, 0.0], abs=1e-12)
    assert got.top1_agree == [False, True]
    # row 0: teacher top-1 is token 0; tail = tokens 1, 2: min(.5,.3) + min(.3,.2) = 0.5 of 0.3 + 0.2 = 0.5
    assert got.tail_covered == pytest.approx([0.5, 0.2])
    assert got.tail_total == pytest.approx([0.5, 0.2])


def test_cross_vocab_units_by_hand():
    """Student V=3, teacher V=4; matched pairs s0~t1 and s1~t0; s2, t2, t3 unmatched (rest bucket)."""
    vocab_map = SimpleNamespace(student_ids=torch.tensor([0, 1]), teacher_ids=torch.tensor([1, 0]))
    # group 0: one token on each side. group 1: two student tokens (first realised id 0 with p=0.5), one teacher
    student = _logits([0.6, 0.3, 0.1], [0.5, 0.25, 0.25], [0.6, 0.3, 0.1])
    teacher = _logits([0.2, 0.5, 0.2, 0.1], [0.3, 0.1, 0.4, 0.2])
    alignment = SpanAlignment(np.array([0, 1, 1]), np.array([0, 1]), 2)
    got = cross_vocab_units(student, teacher, [0, 0, 2], [1, 2], alignment, vocab_map)
    # group 0: q_S = [.6, .3 | .1], q_T = [p_T(t1)=.5, p_T(t0)=.2 | .3]
    kl0 = 0.5 * math.log(0.5 / 0.6) + 0.2 * math.log(0.2 / 0.3) + 0.3 * math.log(0.3 / 0.1)
    # group 1: student merged = 0.5 * [.6, .3, .1] -> q_S = [.3, .15 | .55]; q_T = [.1, .3 | .6]
    kl1 = 0.1 * math.log(0.1 / 0.3) + 0.3 * math.log(0.3 / 0.15) + 0.6 * math.log(0.6 / 0.55)
    assert got.kl == pytest.approx([kl0, kl1], abs=1e-12)
    # group 0: teacher argmax t1 ~ s0 = student argmax. group 1: teacher argmax t2 is unmatched -> no agreement
    assert got.top1_agree == [True, False]
    # group 0: u* = t1; covered = min(.3, .2) (rest never credited); total = .2 + .3
    # group 1: u* = rest bucket (.6); covered = min(.3, .1) + min(.15, .3); total = .1 + .3
    assert got.tail_covered == pytest.approx([0.2, 0.25])
    assert got.tail_total == pytest.approx([0.5, 0.4])


def test_chain_rule_parts_match_merge_span_log_probs():
    torch.manual_seed(0)
    logits = torch.randn(6, 7, dtype=torch.float64)
    ids = torch.tensor([3, 1, 4, 1, 5, 2])
    groups = torch.tensor([0, 0, 1, 2, 2, 2])
    last, prefix = _chain_rule_parts(logits, ids, groups)
    merged = torch.log_softmax(logits[last], -1) + prefix.unsqueeze(-1)
    want = merge_span_log_probs(torch.log_softmax(logits, -1), ids, groups, "bayesian")
    torch.testing.assert_close(merged, want)


def test_cross_vocab_units_same_tokenizer_is_a_coarsening(unigram_tokenizer):
    """Through the cross-tokenizer path with one tokenizer on both sides every group is one token, and the matched
    vocabulary is every token but duplicates (byte-fallback pieces of texts a regular piece has) and specials
    without text: the bucketed KL can only be smaller (data processing), and equal when those carry no mass."""
    tok = unigram_tokenizer
    ids = tok("the cat reads a book", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    vocab_map = VocabMap(tok, tok)
    alignment = align_spans(ids, ids, tok, tok)
    torch.manual_seed(1)
    student, teacher = torch.randn(len(ids), len(tok)) * 3, torch.randn(len(ids), len(tok)) * 3
    same = same_vocab_units(student, teacher)
    cross = cross_vocab_units(student, teacher, ids, ids, alignment, vocab_map)
    assert len(cross) == len(same) == len(ids)
    assert all(c <= s + 1e-9 for c, s in zip(cross.kl, same.kl, strict=True))
    assert all(c <= s + 1e-9 for c, s in zip(cross.tail_covered, same.tail_covered, strict=True))

    unmatched = torch.ones(len(tok), dtype=torch.bool)
    unmatched[vocab_map.student_ids] = False
    student[:, unmatched], teacher[:, unmatched] = -1e4, -1e4
    same = same_vocab_units(student, teacher)
    cross = cross_vocab_units(student, teacher, ids, ids, alignment, vocab_map)
    assert cross.kl == pytest.approx(same.kl, rel=1e-9)
    assert cross.top1_agree == same.top1_agree
    assert cross.tail_covered == pytest.approx(same.tail_covered, rel=1e-9)
    assert cross.tail_total == pytest.approx(same.tail_total, rel=1e-9)


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
