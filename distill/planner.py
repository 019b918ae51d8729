"""The capacity-gap planner: how many bridge models to put between a teacher and a student, and of what size.

A student learns less from a teacher that is far larger than itself. Teacher-Assistant KD (Mirzadeh et al.,
AAAI 2020, arXiv 1902.03393) showed that student accuracy degrades when the teacher/student gap is large and that
distilling through intermediate-size "teacher assistants" recovers it; the law of capacity gap (Zhang, Li, Song,
Ye, Gao, Hu, arXiv 2311.07052, ACL 2025) found the optimal teacher to be about 2.5x the student's parameters
(MiniMA-3B distilled best from LLaMA-2-7B, not from 13B or 70B). Applying that ratio to every hop of a chain is
an extrapolation of those results -- a rule of thumb, not a published recipe (methods report, section 5).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

__all__ = ["ChainPlan", "format_params", "param_count_from_config", "plan_chain"]

SOURCES = (
    "Teacher-Assistant KD (Mirzadeh et al., AAAI 2020, arXiv 1902.03393) and the law of capacity gap "
    "(Zhang et al., arXiv 2311.07052, ACL 2025: the optimal teacher is ~2.5x the student)"
)
_TOLERANCE = 1e-9  # relative slack so that e.g. 6.25 ** 0.5 <= 2.5 holds despite rounding


@dataclass(frozen=True)
class ChainPlan:
    """A distillation chain ``sizes[0]`` (teacher) → bridges → ``sizes[-1]`` (student), in parameters.

    ``ratios[i] = sizes[i] / sizes[i + 1]`` is the size ratio of hop ``i``. ``ideal_sizes`` are the geometric
    sizes before snapping to ``candidates`` (equal to ``sizes`` when no candidates were given).
    """

    sizes: list[int]
    ratios: list[float]
    max_ratio: float
    ideal_sizes: list[int]
    candidates: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_bridges(self) -> int:
        return len(self.sizes) - 2

    @property
    def bridges(self) -> list[int]:
        return self.sizes[1:-1]

    def explain(self) -> str:
        """A few sentences: why this many bridges, each hop's ratio, the rule and its source, and the caveat."""
        teacher, student = self.sizes[0], self.sizes[-1]
        gap = teacher / student
        ideal_hops = len(self.ideal_sizes) - 1
        ideal_ratio = gap ** (1 / ideal_hops)
        text = [f"Teacher {format_params(teacher)} → student {format_params(student)}: a gap of {gap:.2f}x."]
        if ideal_hops == 1:
            text.append(f"That is within the {self.max_ratio:g}x per-hop limit, so no bridge is needed.")
        else:
            fewer = gap ** (1 / (ideal_hops - 1))
            before = "A direct hop" if ideal_hops == 2 else f"With {_bridges(ideal_hops - 2)} each hop"
            verb = "brings" if ideal_hops == 2 else "bring"
            text.append(
                f"{before} would be {fewer:.2f}x, above the {self.max_ratio:g}x per-hop limit; "
                f"{_bridges(ideal_hops - 1)} of geometric size {verb} every hop to {ideal_ratio:.2f}x."
            )
        hops = ", ".join(f"{r:.2f}x" for r in self.ratios)
        chain = " → ".join(format_params(s) for s in self.sizes)
        text.append(f"Chain: {chain} (hop ratios {hops}).")
        text.extend(self.notes)
        text.append(
            f"Rule: at most ~{self.max_ratio:g}x parameters per hop, after {SOURCES}. It is a rule of thumb "
            "extrapolated to chains, not a published recipe: on your task, compare 2-3 teacher or bridge sizes "
            "for a few hundred steps by the student's validation loss."
        )
        return " ".join(text)


def plan_chain(
    teacher_params: int,
    student_params: int,
    *,
    max_ratio: float = 2.5,
    candidates: Sequence[int] | None = None,
) -> ChainPlan:
    """Plan teacher → bridge(s) → student so that each hop is at most ``max_ratio`` times smaller.

    The number of bridges is the smallest ``k`` with ``(teacher / student) ** (1 / (k + 1)) <= max_ratio``;
    bridge ``i`` (1-based) has ``teacher * (student / teacher) ** (i / (k + 1))`` parameters, i.e. the sizes are
    geometric and every hop has the same ratio. The default 2.5 is the optimal teacher/student ratio of the law of
    capacity gap (Zhang et al., arXiv 2311.07052), applied per hop as Teacher-Assistant KD (Mirzadeh et al.,
    arXiv 1902.03393) suggests; methods.md §5 gives ~2.5-3x as the useful range.

    ``candidates`` are the sizes actually available (e.g. the checkpoints of a model family). Each bridge is then
    snapped to a candidate strictly between student and teacher, nearest in log-size, with the chain kept in
    order and no candidate used twice (an order-preserving assignment minimising the summed squared log
    distance). When fewer candidates than bridges are available, all of them are used and the plan notes which
    hops exceed ``max_ratio``.

    Example: 7B → 1B with ``max_ratio=2.5`` is a 7x gap; one bridge leaves 7 ** (1/2) = 2.65x per hop, two give
    7 ** (1/3) = 1.91x: sizes ≈ [7.0B, 3.66B, 1.91B, 1.0B].
    """
    teacher, student = _positive_int(teacher_params, "teacher_params"), _positive_int(student_params, "student_params")
    if student >= teacher:
        raise ValueError(
            f"student_params ({student:,}) must be smaller than teacher_params ({teacher:,}): nothing to bridge"
        )
    if not (isinstance(max_ratio, int | float) and math.isfinite(max_ratio) and max_ratio > 1):
        raise ValueError(f"max_ratio must be a finite number > 1, got {max_ratio!r}")
    gap = teacher / student
    bridges = 0
    while gap ** (1 / (bridges + 1)) > max_ratio * (1 + _TOLERANCE):
        bridges += 1
    ideal = [teacher, *(round(teacher * (student / teacher) ** (i / (bridges + 1))) for i in range(1, bridges + 1))]
    ideal.append(student)
    if any(a <= b for a, b in itertools.pairwise(ideal)):
        raise ValueError(
            f"{bridges} bridges between {teacher:,} and {student:,} parameters cannot all have distinct integer "
            f"sizes with max_ratio={max_ratio}"
        )
    notes: list[str] = []
    sizes = ideal
    pool: list[int] | None = None
    if candidates is not None:
        pool = sorted({_positive_int(c, "candidates") for c in candidates}, reverse=True)
        sizes, notes = _snap(ideal, pool, max_ratio)
    ratios = [a / b for a, b in itertools.pairwise(sizes)]
    return ChainPlan(sizes, ratios, float(max_ratio), ideal, pool, notes)


def _snap(ideal: list[int], pool: list[int], max_ratio: float) -> tuple[list[int], list[str]]:
    """Replace the bridges of ``ideal`` by candidates in ``pool`` (descending): order kept, none used twice."""
    teacher, student, wanted = ideal[0], ideal[-1], ideal[1:-1]
    usable = [c for c in pool if student < c < teacher]
    if not wanted:
        return ideal, ["No bridge is needed, so the candidate sizes were not used."]
    if len(usable) < len(wanted):
        sizes = [teacher, *usable, student]
        listed = ", ".join(format_params(c) for c in usable) or "none"
        notes = [
            f"Only {len(usable)} candidate size{'s lie' if len(usable) != 1 else ' lies'} strictly between student "
            f"and teacher ({listed}), fewer than the {len(wanted)} bridges wanted; all of them are used as bridges."
        ]
    else:
        chosen = _best_ordered_assignment([math.log(b) for b in wanted], [math.log(c) for c in usable], usable)
        sizes = [teacher, *chosen, student]
        moved = ", ".join(f"{format_params(b)} → {format_params(c)}" for b, c in zip(wanted, chosen, strict=True))
        notes = [f"Each bridge was snapped to the nearest available candidate size in log space ({moved})."]
    limit = max_ratio * (1 + _TOLERANCE)
    over = [f"hop {i + 1} ({a / b:.2f}x)" for i, (a, b) in enumerate(itertools.pairwise(sizes)) if a / b > limit]
    if over:
        verb = "exceeds" if len(over) == 1 else "exceed"
        notes.append(f"After snapping, {' and '.join(over)} {verb} the {max_ratio:g}x limit.")
    return sizes, notes


def _best_ordered_assignment(targets: list[float], values: list[float], items: list[int]) -> list[int]:
    """Pick ``len(targets)`` of ``items`` (in their order) minimising Σ (target_j − value_i)²: a small DP."""
    n, k = len(values), len(targets)
    inf = float("inf")
    # cost[j][i]: best cost of matching targets[:j] within values[:i]
    cost = [[0.0] * (n + 1)] + [[inf] * (n + 1) for _ in range(k)]
    take = [[False] * (n + 1) for _ in range(k + 1)]
    for j in range(1, k + 1):
        for i in range(j, n + 1):
            skip = cost[j][i - 1]
            use = cost[j - 1][i - 1] + (targets[j - 1] - values[i - 1]) ** 2
            cost[j][i], take[j][i] = (use, True) if use <= skip else (skip, False)
    chosen: list[int] = []
    j, i = k, n
    while j > 0:
        if take[j][i]:
            chosen.append(items[i - 1])
            j -= 1
        i -= 1
    return chosen[::-1]


def param_count_from_config(
    name_or_path: str | os.PathLike | PretrainedConfig, *, trust_remote_code: bool = False
) -> int:
    """Parameters of a causal LM from its config alone (a local folder, a hub id, or a config object).

    The model is instantiated on the ``meta`` device, so no weights are downloaded or allocated; tied embeddings
    are counted once (as :func:`distill.models.count_parameters` does).
    """
    if isinstance(name_or_path, PretrainedConfig):
        config = name_or_path
    else:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def format_params(n: int) -> str:
    """``7_000_000_000`` → ``"7.0B"``, ``1_777_344`` → ``"1.78M"``, ``210_320`` → ``"210k"``."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            value = n / scale
            if value >= 100:
                return f"{value:.0f}{unit}"
            return f"{value:.1f}{unit}" if value == round(value, 1) else f"{value:.3g}{unit}"
    return str(n)


def _bridges(k: int) -> str:
    return "no bridge" if k == 0 else f"{k} bridge" + ("s" if k > 1 else "")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise TypeError(f"{name} must be a number of parameters, got {value!r}")
    if value <= 0 or not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name} must be a positive whole number of parameters, got {value!r}")
    return int(value)
