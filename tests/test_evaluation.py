"""Tests of `distill.evaluation`: metrics against hand-computed values, and the teacher comparison (the runner:
test_evaluation_runner.py)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill.align import SpanAlignment, VocabMap, align_spans, merge_span_log_probs
from distill.evaluation import (
    METRIC_NAMES,
    cross_vocab_units,
    load_metric,
    same_vocab_units,
)
from distill.evaluation.compare import _chain_rule_parts

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
