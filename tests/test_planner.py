"""The capacity-gap planner: hand-checked chains, snapping to available sizes, errors, and config-only counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from distill.models import DEMO_CHAIN, ModelSpec, build_model, count_parameters, save_model
from distill.planner import ChainPlan, format_params, param_count_from_config, plan_chain

B = 1_000_000_000


def test_7b_to_1b_needs_two_bridges() -> None:
    # 7 ** (1/2) = 2.65 > 2.5 (one bridge is not enough); 7 ** (1/3) = 1.913 <= 2.5.
    plan = plan_chain(7 * B, 1 * B)
    assert isinstance(plan, ChainPlan) and plan.num_bridges == 2
    assert plan.sizes == [7 * B, round(7 * B / 7 ** (1 / 3)), round(7 * B / 7 ** (2 / 3)), 1 * B]
    assert plan.sizes[1] == pytest.approx(3.659e9, rel=1e-3) and plan.sizes[2] == pytest.approx(1.913e9, rel=1e-3)
    assert plan.ratios == pytest.approx([1.913] * 3, abs=1e-3)
    assert plan.bridges == plan.sizes[1:3] and plan.ideal_sizes == plan.sizes
    text = plan.explain()
    for needle in ("7.00x", "2.65x", "2 bridges", "1.91x", "2.5x", "3.66B", "1.91B", "arXiv 2311.07052", "1902.03393"):
        assert needle in text, needle
    assert "rule of thumb" in text


@pytest.mark.parametrize(
    ("teacher", "student", "max_ratio", "bridges"),
    [
        (5, 2, 2.5, 0),  # exactly 2.5x: a direct hop
        (25, 4, 2.5, 1),  # 6.25 = 2.5 ** 2 exactly: one bridge, despite float rounding
        (26, 4, 2.5, 2),
        (70 * B, 3 * B, 2.5, 3),  # 23.3x: 23.3 ** (1/3) = 2.86 > 2.5, 23.3 ** (1/4) = 2.20
        (70 * B, 3 * B, 3.0, 2),
        (1_777_344, 210_320, 3.0, 1),  # the demo chain (8.45x): one bridge at ~3x per hop
        (1_777_344, 210_320, 2.5, 2),
    ],
)
def test_number_of_bridges(teacher: int, student: int, max_ratio: float, bridges: int) -> None:
    plan = plan_chain(teacher, student, max_ratio=max_ratio)
    assert plan.num_bridges == bridges
    assert all(r <= max_ratio * (1 + 1e-6) for r in plan.ratios)
    assert math.prod(plan.ratios) == pytest.approx(teacher / student)
    assert plan.sizes == sorted(plan.sizes, reverse=True) and len(set(plan.sizes)) == len(plan.sizes)


def test_no_bridge_is_explained() -> None:
    text = plan_chain(5 * B, 2 * B).explain()
    assert "no bridge is needed" in text and "2.50x" in text


def test_snapping_to_a_model_family() -> None:
    # methods.md §5's example: 70B → 27B → 9B → 3B (Gemma-2-like sizes), ideal 70 → 24.5 → 8.57 → 3.
    plan = plan_chain(70 * B, 3 * B, max_ratio=3.0, candidates=[2 * B, 9 * B, 27 * B, 70 * B])
    assert plan.sizes == [70 * B, 27 * B, 9 * B, 3 * B]
    assert plan.ideal_sizes[1] == pytest.approx(24.5e9, rel=1e-2)
    assert plan.ratios == pytest.approx([70 / 27, 3.0, 3.0])
    text = plan.explain()
    assert "snapped" in text and "24.5B → 27.0B" in text and "8.57B → 9.0B" in text


def test_snapping_keeps_order_and_never_repeats() -> None:
    # Both ideal bridges (3.66B, 1.91B) are nearest to 2B on their own; the chain takes 4B and 2B instead.
    plan = plan_chain(7 * B, 1 * B, candidates=[2 * B, 4 * B, 1.5 * B])
    assert plan.sizes == [7 * B, 4 * B, 2 * B, 1 * B]
    plan = plan_chain(7 * B, 1 * B, candidates=[2 * B, 2.2 * B, 1.9 * B])
    assert plan.sizes == [7 * B, 2.2 * B, 1.9 * B, 1 * B]


def test_too_few_candidates_uses_all_and_says_so() -> None:
    plan = plan_chain(7 * B, 1 * B, candidates=[3 * B, 7 * B, 1 * B, 10 * B])  # only 3B is strictly between
    assert plan.sizes == [7 * B, 3 * B, 1 * B]
    text = plan.explain()
    assert "Only 1 candidate size lies" in text and "hop 2 (3.00x) exceeds the 2.5x limit" in text
    assert plan_chain(7 * B, 1 * B, candidates=[]).sizes == [7 * B, 1 * B]
    assert "no bridge is needed" in plan_chain(2 * B, 1 * B, candidates=[1.5 * B]).explain().lower()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"teacher_params": 1 * B, "student_params": 1 * B}, ValueError, "smaller than teacher"),
        ({"teacher_params": 1 * B, "student_params": 3 * B}, ValueError, "smaller than teacher"),
        ({"teacher_params": 0, "student_params": -1}, ValueError, "positive"),
        ({"teacher_params": 10, "student_params": 1.5}, ValueError, "whole number"),
        ({"teacher_params": "7B", "student_params": 1}, TypeError, "number of parameters"),
        ({"teacher_params": 7, "student_params": 1, "max_ratio": 1.0}, ValueError, "max_ratio"),
        ({"teacher_params": 7, "student_params": 1, "max_ratio": float("inf")}, ValueError, "max_ratio"),
        ({"teacher_params": 7, "student_params": 1, "candidates": [3, -2]}, ValueError, "candidates"),
        ({"teacher_params": 3, "student_params": 1, "max_ratio": 1.1}, ValueError, "distinct integer"),
    ],
)
def test_bad_input(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        plan_chain(**kwargs)


def test_format_params() -> None:
    assert [format_params(n) for n in (7 * B, 3_659_305_710, 1_777_344, 210_320, 999)] == [
        "7.0B",
        "3.66B",
        "1.78M",
        "210k",
        "999",
    ]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_param_count_from_config_matches_the_built_model(
    tmp_path: Path, bpe_tokenizer: PreTrainedTokenizerFast, family: str
) -> None:
    spec = ModelSpec(family=family, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    model = build_model(spec, bpe_tokenizer)
    model.config.save_pretrained(tmp_path)  # the config alone: no weights to read
    assert param_count_from_config(tmp_path) == count_parameters(model)
    assert param_count_from_config(model.config) == count_parameters(model)


def test_param_count_of_the_demo_chain_folders(tmp_path: Path, bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    sizes = {}
    for role, spec in DEMO_CHAIN.items():
        model = build_model(spec, bpe_tokenizer)
        save_model(model, bpe_tokenizer, tmp_path / role)
        sizes[role] = param_count_from_config(tmp_path / role)
        assert sizes[role] == count_parameters(model)
    assert plan_chain(sizes["teacher"], sizes["student"], max_ratio=3.0).num_bridges == 1
