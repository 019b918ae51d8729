import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.align.dtw import (
    contextual_vocab_pairs,
    dtw_align,
    dtw_align_ids,
    dtw_path,
    entropy_weights,
    token_edit_distance_matrix,
)
from distill.align.spans import SpanAlignment


def _lev(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _check_groups(al: SpanAlignment, n: int, m: int) -> None:
    assert al.student.shape == (n,) and al.teacher.shape == (m,)
    for side in (al.student, al.teacher):
        assert side[0] == 0 and side[-1] == al.num_groups - 1
        assert np.all(np.diff(side) >= 0) and np.all(np.diff(side) <= 1)  # contiguous, in order, none skipped
    # every group has tokens on both sides (DTW components are never one-sided)
    assert set(al.student.tolist()) == set(al.teacher.tolist()) == set(range(al.num_groups))


# --- entropy weights ---------------------------------------------------------------------------------------------


def test_entropy_weights_uniform_ties_are_lowest():
    assert entropy_weights(torch.zeros(4, 7)).tolist() == [3, 3, 3, 3]
    # same entropy from shifted logits: still all-equal despite float noise
    assert entropy_weights(torch.tensor([[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]])).tolist() == [3, 3]


def test_entropy_weights_peaked_vs_flat():
    logits = torch.tensor([[20.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert entropy_weights(logits).tolist() == [3, 5]  # h = 0 → floor(3.36) ; h = 1 → floor(5.64)


def test_entropy_weights_middle_and_formula():
    # entropies 0, log 2, log 4 → h = 0, 0.5, 1 → floor(3σ(-2)+3)=3, floor(3σ(0)+3)=4, floor(3σ(2)+3)=5
    ninf = float("-inf")
    logits = torch.tensor([[0.0, ninf, ninf, ninf], [0.0, 0.0, ninf, ninf], [0.0, 0.0, 0.0, 0.0]])
    w = entropy_weights(logits)
    assert w.dtype == torch.long and w.tolist() == [3, 4, 5]
    h = torch.tensor([0.0, 0.5, 1.0])
    assert w.tolist() == [math.floor(3 * torch.sigmoid(4 * x - 2).item() + 3) for x in h]


def test_entropy_weights_neg_inf_no_nan():
    ninf = float("-inf")
    logits = torch.tensor([[1.0, ninf, 0.5], [ninf, ninf, ninf], [0.0, 0.0, ninf]], requires_grad=True)
    w = entropy_weights(logits)
    assert w.shape == (3,) and set(w.tolist()) <= {3, 4, 5}
    assert entropy_weights(torch.zeros(0, 5)).shape == (0,)


# --- edit distance -----------------------------------------------------------------------------------------------


def test_token_edit_distance_matrix_values():
    a = ["ĠHello", "▁wor", "ld", "</s>", "Ġ"]
    b = ["Hello", " world", "<|im_end|>", "▁", "kitten"]
    e = token_edit_distance_matrix(a, b)
    assert e.shape == (5, 5)
    assert e[0, 0] == 0 and e[1, 1] == 2 and e[2, 1] == 3
    assert e[3, 2] == 0  # two specials
    assert e[4, 3] == 0  # both empty after stripping
    assert e[3, 3] == 1 and e[3, 0] == 5  # a special counts as one character
    assert e[0, 4] == _lev("Hello", "kitten")


def test_token_edit_distance_matrix_matches_reference():
    rng = np.random.default_rng(0)
    alphabet = list("abcdeĠ▁ xyzé")
    a = ["".join(rng.choice(alphabet, rng.integers(0, 9))) for _ in range(30)]
    b = ["".join(rng.choice(alphabet, rng.integers(0, 14))) for _ in range(25)] + ["a" * 40]
    e = token_edit_distance_matrix(a, b)
    strip = str.maketrans("", "", "Ġ▁ ")
    ref = np.array([[_lev(x.translate(strip), y.translate(strip)) for y in b] for x in a])
    np.testing.assert_array_equal(e, ref)


# --- DTW ---------------------------------------------------------------------------------------------------------


def test_dtw_path_hand_case():
    cost = np.array([[2.0, 3, 3], [3, 2, 1], [4, 2, 3]])
    # D = [[2,5,8],[5,4,5],[9,6,7]]: back-trace (2,2) ← (1,1) ← (0,0)
    assert dtw_path(cost) == [(0, 0), (1, 1), (2, 2)]
    assert dtw_path(np.array([[1.0, 1.0, 1.0]])) == [(0, 0), (0, 1), (0, 2)]
    assert dtw_path(np.array([[1.0], [1.0]])) == [(0, 0), (1, 0)]
    assert dtw_path(np.zeros((3, 3))) == [(0, 0), (1, 1), (2, 2)]  # ties prefer the diagonal
    with pytest.raises(ValueError):
        dtw_path(np.zeros((0, 3)))


def test_dtw_identical_tokens_one_group_each():
    toks = ["ĠThe", "Ġcat", "Ġsat", "."]
    al = dtw_align(toks, list(toks))
    assert al.num_groups == 4
    assert al.student.tolist() == al.teacher.tolist() == [0, 1, 2, 3]


def test_dtw_split_token_two_to_one():
    al = dtw_align(["Hello", " world"], ["Hel", "lo", "▁world"])
    assert al.student.tolist() == [0, 1] and al.teacher.tolist() == [0, 0, 1]
    assert al.ranges() == [((0, 1), (0, 2)), ((1, 2), (2, 3))]
    # "Ġcat" ↔ "▁c" + "at": 1:2 (ties in the back-trace go diagonal, so "at" joins "cat", not "sat")
    al = dtw_align(["ĠThe", "Ġcat", "Ġsat"], ["▁The", "▁c", "at", "▁sat"])
    assert al.student.tolist() == [0, 1, 2] and al.teacher.tolist() == [0, 1, 1, 2]


def test_dtw_hello_world_example():
    # stripped costs [[2,3,3],[3,2,1],[4,2,3]] (see test_dtw_path_hand_case): DTW pairs the tokens 1:1,
    # unlike byte spans, which would give the two groups "Hello" and " world".
    s, t = ["Hel", "lo", " world"], ["Hello", " wor", "ld"]
    np.testing.assert_array_equal(token_edit_distance_matrix(s, t), [[2, 3, 3], [3, 2, 1], [4, 2, 3]])
    al = dtw_align(s, t)
    assert al.student.tolist() == [0, 1, 2] and al.teacher.tolist() == [0, 1, 2]


def test_dtw_weights():
    s, t = ["ab", "c"], ["a", "bc"]  # cost [[1, 2], [1, 1]] → diagonal
    assert dtw_align(s, t).num_groups == 2
    with pytest.raises(ValueError):
        dtw_align(s, t, student_weights=[1, 2, 3])
    w = entropy_weights(torch.tensor([[9.0, 0, 0], [0.0, 0, 0]]))
    _check_groups(dtw_align(s, t, student_weights=w, teacher_weights=torch.tensor([5, 3])), 2, 2)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(alphabet="abĠ▁ ", max_size=4), min_size=1, max_size=12),
    st.lists(st.text(alphabet="abĠ▁ ", max_size=4), min_size=1, max_size=12),
    st.data(),
)
def test_dtw_groups_property(s, t, data):
    ws = data.draw(st.lists(st.integers(3, 5), min_size=len(s), max_size=len(s)))
    wt = data.draw(st.lists(st.integers(3, 5), min_size=len(t), max_size=len(t)))
    al = dtw_align(s, t, ws, wt)
    _check_groups(al, len(s), len(t))
    for (s0, s1), (t0, t1) in al.ranges():
        assert s1 - s0 == 1 or t1 - t0 == 1  # a DTW component is 1:k or k:1


def test_dtw_path_is_optimal_small_random():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n, m = rng.integers(1, 6, size=2)
        cost = rng.integers(0, 4, size=(n, m)).astype(float)
        path = dtw_path(cost)
        assert path[0] == (0, 0) and path[-1] == (n - 1, m - 1)
        steps = np.diff(np.array(path), axis=0)
        assert all(tuple(x) in {(0, 1), (1, 0), (1, 1)} for x in steps)
        best = np.full((n, m), np.inf)
        for i in range(n):
            for j in range(m):
                prev = [best[a, b] for a, b in ((i - 1, j), (i, j - 1), (i - 1, j - 1)) if a >= 0 and b >= 0]
                best[i, j] = cost[i, j] + (min(prev) if prev else 0.0)
        assert sum(cost[i, j] for i, j in path) == best[-1, -1]


def test_dtw_large_runs():
    rng = np.random.default_rng(2)
    words = ["Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat", ".", "Ġand", "Ġran", "Ġaway", "\n"]
    s = [str(w) for w in rng.choice(words, 400)]
    t = [w.replace("Ġ", "▁") for w in s]
    al = dtw_align(s, t)
    assert al.num_groups == 400
    path = dtw_path(rng.random((400, 400)))
    assert len(path) >= 400 and path[-1] == (399, 399)


class _Tok:
    def __init__(self, vocab, special):
        self.vocab = vocab
        self.all_special_tokens = special

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i] for i in ids]


def test_dtw_align_ids():
    stok = _Tok(["Hel", "lo", "▁world", "</s>"], ["</s>"])
    ttok = _Tok(["<|im_end|>", "ĠHello", "Ġworld"], ["<|im_end|>"])
    al = dtw_align_ids(torch.tensor([0, 1, 2, 3]), [1, 2, 0], stok, ttok)
    assert al.student.tolist() == [0, 0, 1, 2] and al.teacher.tolist() == [0, 1, 2]
    al = dtw_align_ids([0, 1, 2, 3], [1, 2, 0], stok, ttok, torch.randn(4, 4), torch.randn(3, 3))
    _check_groups(al, 4, 3)


# --- contextual vocabulary pairs ---------------------------------------------------------------------------------


def test_contextual_vocab_pairs_hand_example():
    teacher_vocab = ["Ġhello", "the", "Ġzebra", "Ġ"]
    student_vocab = ["▁hello", "the", "banana", "▁zebras", "▁"]
    # static pairs: "the" ↔ "the"
    ms, mt = torch.tensor([1]), torch.tensor([1])
    teacher_logits = torch.tensor([[5.0, 3.0, 4.0, -9.0], [1.0, 3.0, 4.0, -9.0]])  # rank: hello, zebra, the
    student_logits = torch.tensor(
        [[5.0, 4.0, 3.0, -9.0, -9.0], [5.0, 4.0, -9.0, 3.0, -9.0]]
    )  # row 0 top-3: hello, the, banana; row 1: hello, the, zebras
    cache = {}
    s_ids, t_ids, valid = contextual_vocab_pairs(
        student_logits, teacher_logits, student_vocab, teacher_vocab, ms, mt, k=3, cache=cache
    )
    assert s_ids.shape == t_ids.shape == valid.shape == (2, 3)
    assert s_ids.dtype == t_ids.dtype == torch.long and valid.dtype == torch.bool
    # row 0: Ġhello → ▁hello (d = 0); Ġzebra vs banana: d = 5/11 ≥ 0.3 → unpaired; "the" is static
    assert s_ids[0].tolist() == [0, -1, -1] and t_ids[0].tolist() == [0, -1, -1]
    assert valid[0].tolist() == [True, False, False]
    # row 1: teacher rank zebra, the, hello; zebra → zebras (d = 1/11), hello → hello
    assert s_ids[1].tolist() == [3, 0, -1] and t_ids[1].tolist() == [2, 0, -1]
    assert cache[("zebra", "zebras")] == pytest.approx(1 / 11)
    assert cache[("zebra", "banana")] == pytest.approx(_lev("zebra", "banana") / 11)
    # a cached call gives the same answer
    again = contextual_vocab_pairs(
        student_logits, teacher_logits, student_vocab, teacher_vocab, ms, mt, k=3, cache=cache
    )
    assert again[0].tolist() == s_ids.tolist() and again[2].tolist() == valid.tolist()


def test_contextual_vocab_pairs_one_to_one_and_threshold():
    teacher_vocab = ["Ġcat", "cat", "Ġ"]
    student_vocab = ["▁cat", "dog", "▁"]
    tl = torch.tensor([[3.0, 2.0, 1.0]])
    sl = torch.tensor([[3.0, 2.0, 1.0]])
    empty = torch.zeros(0, dtype=torch.long)
    s_ids, t_ids, valid = contextual_vocab_pairs(sl, tl, student_vocab, teacher_vocab, empty, empty, k=3)
    # Ġcat takes ▁cat; "cat" cannot reuse it (dog: d = 3/6); "Ġ" ↔ "▁" both empty → d = 0
    assert t_ids[0].tolist() == [0, 2, -1] and s_ids[0].tolist() == [0, 2, -1]
    s_ids, _, valid = contextual_vocab_pairs(sl, tl, student_vocab, teacher_vocab, empty, empty, k=3, threshold=0.0)
    assert not valid.any() and (s_ids == -1).all()
    # masked (-inf) student candidates are never used
    sl = torch.tensor([[float("-inf"), 2.0, 1.0]])
    s_ids, t_ids, _ = contextual_vocab_pairs(sl, tl, student_vocab, teacher_vocab, empty, empty, k=3)
    assert 0 not in s_ids[0].tolist() and t_ids[0].tolist() == [2, -1, -1]


def test_dtw_alignment_drives_the_cross_tokenizer_losses():
    """A DTW alignment is a SpanAlignment like the byte-span one: uld and gold take it unchanged."""
    from distill import losses
    from distill.align import AlignedGroups

    student_tokens, teacher_tokens = ["▁Hel", "lo", "▁wor", "ld"], ["Hello", "Ġworld"]
    alignment = dtw_align(student_tokens, teacher_tokens)
    groups = AlignedGroups.from_alignments([alignment], torch.zeros(1, 4, dtype=torch.long),
                                           torch.zeros(1, 2, dtype=torch.long))
    student = torch.randn(1, 4, 9, requires_grad=True)
    teacher = torch.randn(1, 2, 13)
    loss = losses.uld(student, teacher, groups.student_group >= 0, alignment=groups)
    loss.backward()
    assert torch.isfinite(loss) and student.grad.abs().sum() > 0
