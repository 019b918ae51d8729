"""CDM-style token alignment by entropy-weighted DTW, and CDM's contextual vocabulary mapping.

CDM (Contextual Dynamic Mapping, arXiv 2502.11104) aligns a student token sequence `s_0..s_{n-1}` with a teacher
sequence `t_0..t_{m-1}` of the same text by dynamic time warping over token surface strings:

    c(i, j) = Lev(strip(s_i), strip(t_j)) · w^S_i · w^T_j
    D(i, j) = c(i, j) + min(D(i-1, j), D(i, j-1), D(i-1, j-1)),   path from (0, 0) to (n-1, m-1)

where `strip` removes the space markers "Ġ", "▁" and " ", and `w ∈ {3, 4, 5}` are `entropy_weights`. Path pairs
sharing a student or teacher index form one group: the result is a `SpanAlignment`, as from `align_spans`.
`contextual_vocab_pairs` adds CDM's per-position vocabulary pairs by normalised edit distance among top-k ids.

Special tokens (`<...>` pieces such as "</s>", "<|im_end|>", except byte-fallback "<0xNN>", or an explicit `special`
set) all compare as one sentinel character: two specials cost 0, a special vs a plain token like a 1-char string.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import numpy as np
import torch

from distill.align.spans import SpanAlignment

_SPECIAL = "\ue000"  # private-use sentinel standing for any special token
_SPECIAL_RE = re.compile(r"<[^<>\s]+>")
_BYTE_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_STRIP = str.maketrans("", "", "Ġ▁ ")
_CHUNK = 8192


def entropy_weights(logits: torch.Tensor) -> torch.Tensor:
    """CDM's integer entropy weight of each position.

    With `p_i = softmax(logits_i)`: `H_i = -Σ_v p_i(v) log p_i(v)`, `h_i = (H_i - min H) / (max H - min H)` (0 for
    every position when all entropies are equal), `w_i = floor(3 · sigmoid(4 h_i - 2) + 3) ∈ {3, 4, 5}`.
    Entries of `-inf` (masked vocabulary) count as probability 0; a row that is all `-inf` has entropy 0.

    Args:
        logits: `[T, V]` logits, one row per position.

    Returns:
        `[T]` long tensor of weights in {3, 4, 5}, on the device of `logits`.
    """
    if logits.ndim != 2:
        raise ValueError(f"entropy_weights: logits must be [T, V], got shape {tuple(logits.shape)}")
    with torch.no_grad():
        x = logits.detach().float()
        logp = x - torch.logsumexp(x, dim=-1, keepdim=True)  # -inf stays -inf, p = 0 there
        entropy = -(logp.exp() * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(-1).nan_to_num(0.0, 0.0, 0.0)
        if entropy.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=logits.device)
        lo, hi = entropy.min(), entropy.max()
        span = hi - lo
        all_equal = span <= 1e-6 * max(1.0, float(hi.abs()))
        h = torch.zeros_like(entropy) if all_equal else (entropy - lo) / span
        return torch.floor(3.0 * torch.sigmoid(4.0 * h - 2.0) + 3.0).long().clamp_(3, 5)


def _surface(token: str | None, special: Collection[str] | None = None) -> str:
    """Comparison string of a token: specials become one sentinel char, otherwise space markers are removed."""
    if token is None:
        return ""
    if special is None:
        return _SPECIAL if _SPECIAL_RE.fullmatch(token) and not _BYTE_RE.fullmatch(token) else token.translate(_STRIP)
    return _SPECIAL if token in special else token.translate(_STRIP)


def _encode(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Code points `[N, L]` (int32, padded with -1) and lengths `[N]` of a list of strings."""
    lens = np.fromiter((len(s) for s in strings), dtype=np.int64, count=len(strings))
    codes = np.full((len(strings), max(int(lens.max(initial=0)), 1)), -1, dtype=np.int32)
    for r, s in enumerate(strings):
        if s:
            codes[r, : len(s)] = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)
    return codes, lens


def _lev_block(a: np.ndarray, la: np.ndarray, b: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """Levenshtein distance of row pairs `a[r, :la[r]]`, `b[r, :lb[r]]` (`a [N, La]`, `b [N, Lb]`), all rows at once.

    Row i of the DP: `tmp_j = min(D_{i-1, j-1} + [a_i != b_j], D_{i-1, j} + 1)` and `D_{i, j} = min(tmp_j, D_{i, j-1}
    + 1)`, solved as `D_{i, j} = j + cummin_k≤j (tmp_k - k)` with `tmp_0 = i`. Padding never reaches `D[la, lb]`.
    """
    n, width = b.shape
    steps = np.arange(width + 1, dtype=np.int64)
    prev = np.broadcast_to(steps, (n, width + 1)).copy()
    out = lb.astype(np.int64).copy()
    for i in range(1, a.shape[1] + 1):
        tmp = np.minimum(prev[:, :-1] + (a[:, i - 1, None] != b), prev[:, 1:] + 1)
        t = np.concatenate([np.full((n, 1), i, dtype=np.int64), tmp], axis=1) - steps
        prev = np.minimum.accumulate(t, axis=1) + steps
        done = np.flatnonzero(la == i)
        out[done] = prev[done, lb[done]]
    return out


def _levenshtein(sa: Sequence[str], sb: Sequence[str], ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """`Lev(sa[ia[r]], sb[ib[r]])` for every r; pairs are sorted by length and solved in vectorised chunks."""
    codes_a, len_a = _encode(sa)
    codes_b, len_b = _encode(sb)
    la, lb = len_a[ia], len_b[ib]
    out = np.empty(len(ia), dtype=np.int64)
    order = np.lexsort((np.minimum(la, lb), np.maximum(la, lb)))
    for start in range(0, len(order), _CHUNK):
        sel = order[start : start + _CHUNK]
        wa, wb = int(la[sel].max()), int(lb[sel].max())
        out[sel] = _lev_block(codes_a[ia[sel], :wa], la[sel], codes_b[ib[sel], :wb], lb[sel])
    return out


def _unique(strings: Sequence[str]) -> tuple[list[str], np.ndarray]:
    table = dict.fromkeys(strings)
    pos = {s: r for r, s in enumerate(table)}
    return list(table), np.fromiter((pos[s] for s in strings), dtype=np.int64, count=len(strings))


def token_edit_distance_matrix(
    a: Sequence[str], b: Sequence[str], special: Collection[str] | None = None
) -> np.ndarray:
    """CDM's token cost `E [Ta, Tb]` (int64): `E[i, j] = Lev(strip(a[i]), strip(b[j]))`, the character Levenshtein
    distance after removing "Ġ", "▁" and spaces; specials (the `special` strings, default `<...>` pieces other than
    byte fallback `<0xNN>`) compare as one shared sentinel character. Each distinct string pair is computed once.
    """
    ua, inv_a = _unique([_surface(s, special) for s in a])
    ub, inv_b = _unique([_surface(s, special) for s in b])
    if not ua or not ub:
        return np.zeros((len(a), len(b)), dtype=np.int64)
    ia, ib = np.meshgrid(np.arange(len(ua)), np.arange(len(ub)), indexing="ij")
    table = _levenshtein(ua, ub, ia.ravel(), ib.ravel()).reshape(len(ua), len(ub))
    return table[inv_a[:, None], inv_b[None, :]]


def dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """Classic DTW warping path through a cost matrix `cost [n, m]` (finite, non-negative).

    `D(i, j) = c(i, j) + min(D(i-1, j), D(i, j-1), D(i-1, j-1))` with `D(0, 0) = c(0, 0)` and `D = +inf` outside the
    matrix; filled one anti-diagonal at a time. The back-trace from `(n-1, m-1)` to `(0, 0)` takes the predecessor with
    the smallest D, ties broken diagonal, then `(i-1, j)`, then `(i, j-1)`. Returns the `(i, j)` pairs from `(0, 0)`
    to `(n-1, m-1)`; each step advances i, j or both by one.
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"dtw_path: cost must be a non-empty [n, m] matrix, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("dtw_path: cost has non-finite entries")
    n, m = c.shape
    acc = np.full((n + 1, m + 1), np.inf)  # acc[i + 1, j + 1] = D(i, j)
    acc[0, 0] = 0.0
    for d in range(n + m - 1):
        i = np.arange(max(0, d - m + 1), min(n - 1, d) + 1)
        j = d - i
        acc[i + 1, j + 1] = c[i, j] + np.minimum(np.minimum(acc[i, j + 1], acc[i + 1, j]), acc[i, j])
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        diag, up, left = acc[i, j], acc[i, j + 1], acc[i + 1, j]
        if diag <= up and diag <= left:
            i, j = i - 1, j - 1
        elif up <= left:
            i -= 1
        else:
            j -= 1
        path.append((i, j))
    return path[::-1]


def _path_groups(path: Sequence[tuple[int, int]], n: int, m: int) -> SpanAlignment:
    """Connected components of a monotone path: a new group starts at every diagonal step."""
    p = np.asarray(path, dtype=np.int64).reshape(-1, 2)
    group = np.concatenate([[0], np.cumsum((np.diff(p, axis=0) == 1).all(axis=1))])
    student, teacher = np.empty(n, dtype=np.int64), np.empty(m, dtype=np.int64)
    student[p[:, 0]] = group
    teacher[p[:, 1]] = group
    return SpanAlignment(student, teacher, int(group[-1]) + 1)


def _as_weights(weights, size: int, name: str) -> np.ndarray:
    if weights is None:
        return np.ones(size)
    w = np.asarray(torch.as_tensor(weights).detach().cpu(), dtype=np.float64).reshape(-1)
    if w.shape[0] != size:
        raise ValueError(f"dtw_align: {name} has {w.shape[0]} entries for {size} tokens")
    return w


def dtw_align(
    student_tokens: Sequence[str],
    teacher_tokens: Sequence[str],
    student_weights=None,
    teacher_weights=None,
    special: Collection[str] | None = None,
) -> SpanAlignment:
    """Align `[Ts]` student and `[Tt]` teacher token strings of one text by entropy-weighted DTW (CDM step 2).

    Cost `c(i, j) = Lev(strip(s_i), strip(t_j)) · w^S_i · w^T_j` (`token_edit_distance_matrix`; optional weights
    `[Ts]` / `[Tt]`, e.g. `entropy_weights`, default 1), path from `dtw_path`. Path pairs sharing a student or teacher
    index form one group, so each group is a non-empty run of consecutive tokens on both sides (1:1, 1:k or k:1),
    groups in text order. Returns a `SpanAlignment` (`student [Ts]`, `teacher [Tt]` group indices).
    """
    n, m = len(student_tokens), len(teacher_tokens)
    if n == 0 or m == 0:
        raise ValueError(f"dtw_align: empty sequence ({n} student tokens, {m} teacher tokens)")
    cost = token_edit_distance_matrix(student_tokens, teacher_tokens, special).astype(np.float64)
    cost *= _as_weights(student_weights, n, "student_weights")[:, None]
    cost *= _as_weights(teacher_weights, m, "teacher_weights")[None, :]
    return _path_groups(dtw_path(cost), n, m)


def dtw_align_ids(
    student_ids,
    teacher_ids,
    student_tokenizer,
    teacher_tokenizer,
    student_logits: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
) -> SpanAlignment:
    """`dtw_align` on token ids: `[Ts]` / `[Tt]` ids (list or 1-D tensor) are turned into strings with each tokenizer's
    `convert_ids_to_tokens`; the tokenizers' special tokens are the specials. If given, `student_logits [Ts, Vs]` and
    `teacher_logits [Tt, Vt]` (row i = the distribution at token i) give the `entropy_weights`; otherwise weight 1.
    """
    tokens = [
        tok.convert_ids_to_tokens(torch.as_tensor(ids).reshape(-1).tolist())
        for tok, ids in ((student_tokenizer, student_ids), (teacher_tokenizer, teacher_ids))
    ]
    special = {s for tok in (student_tokenizer, teacher_tokenizer) for s in getattr(tok, "all_special_tokens", [])}
    weights = [None if z is None else entropy_weights(z) for z in (student_logits, teacher_logits)]
    return dtw_align(*tokens, *weights, special=special or None)


def contextual_vocab_pairs(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_strings: Sequence[str],
    teacher_strings: Sequence[str],
    matched_student_ids: torch.Tensor,
    matched_teacher_ids: torch.Tensor,
    k: int = 100,
    threshold: float = 0.3,
    cache: dict[tuple[str, str], float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CDM's dynamic contextual vocabulary mapping (step 4), teacher → student direction.

    At each aligned row g, let `T_g` = the teacher's top-k ids and `S_g` = the student's top-k ids (`-inf` logits
    excluded). Each `t ∈ T_g` without a static match (not in `matched_teacher_ids`) is paired, in teacher-rank order,
    with the `s ∈ S_g` not statically matched (not in `matched_student_ids`) and not yet taken in this row that
    minimises `d(t, s) = Lev(a, b) / (|a| + |b|)` on stripped strings `a`, `b` (0 when both are empty; ties → higher
    student rank); the pair is kept if `d < threshold`. Distances are computed once per distinct id pair (and looked
    up in / added to `cache`, keyed by stripped strings, if given). For the student → teacher direction call again
    with the roles swapped.

    Args:
        student_logits: `[G, Vs]`, teacher_logits: `[G, Vt]` logits of the aligned rows.
        student_strings: `[Vs]` id → token string table; teacher_strings: `[Vt]` likewise.
        matched_student_ids, matched_teacher_ids: `[M]` ids of the static (exact-string) pairs.

    Returns:
        `(student_ids [G, P], teacher_ids [G, P], valid [G, P])` with `P = min(k, Vt)`: the extra pairs of each row,
        packed to the front in teacher-rank order, long ids padded with -1, on `student_logits.device`.
    """
    if student_logits.ndim != 2 or teacher_logits.ndim != 2 or student_logits.shape[0] != teacher_logits.shape[0]:
        shapes = f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        raise ValueError(f"contextual_vocab_pairs: need [G, Vs] and [G, Vt] logits, got {shapes}")
    rows, vs = student_logits.shape
    vt = teacher_logits.shape[1]
    with torch.no_grad():
        t_val, t_top = (x.cpu().numpy() for x in teacher_logits.detach().float().topk(min(k, vt), dim=-1))
        s_val, s_top = (x.cpu().numpy() for x in student_logits.detach().float().topk(min(k, vs), dim=-1))
    t_static, s_static = np.zeros(vt, dtype=bool), np.zeros(vs, dtype=bool)
    t_static[np.asarray(torch.as_tensor(matched_teacher_ids).cpu(), dtype=np.int64).reshape(-1)] = True
    s_static[np.asarray(torch.as_tensor(matched_student_ids).cpu(), dtype=np.int64).reshape(-1)] = True
    t_need = ~t_static[t_top] & np.isfinite(t_val)
    s_free = ~s_static[s_top] & np.isfinite(s_val)
    g, r, c = np.nonzero(t_need[:, :, None] & s_free[:, None, :])
    dist = np.full((rows, t_top.shape[1], s_top.shape[1]), np.inf)
    if len(g):
        keys, inv = np.unique(t_top[g, r] * vs + s_top[g, c], return_inverse=True)
        ut, ti = np.unique(keys // vs, return_inverse=True)
        us, si = np.unique(keys % vs, return_inverse=True)
        a = [_surface(teacher_strings[t]) for t in ut.tolist()]
        b = [_surface(student_strings[s]) for s in us.tolist()]
        d = np.full(len(keys), np.nan)
        if cache is not None:
            d[:] = [cache.get((a[x], b[y]), np.nan) for x, y in zip(ti.tolist(), si.tolist(), strict=True)]
        todo = np.flatnonzero(np.isnan(d))
        if len(todo):
            lev = _levenshtein(a, b, ti[todo], si[todo])
            total = np.array([len(x) for x in a])[ti[todo]] + np.array([len(y) for y in b])[si[todo]]
            d[todo] = np.where(total > 0, lev / np.maximum(total, 1), 0.0)
            if cache is not None:
                cache.update(((a[ti[x]], b[si[x]]), float(d[x])) for x in todo.tolist())
        dist[g, r, c] = d[inv.reshape(-1)]
    out = np.full(t_top.shape, -1, dtype=np.int64)
    taken = np.zeros(s_top.shape, dtype=bool)
    arange = np.arange(rows)
    for rank in np.flatnonzero(t_need.any(axis=0)):  # teacher ranks in order; one student id per row at most once
        dr = np.where(taken, np.inf, dist[:, rank, :])
        best = dr.argmin(axis=1)
        ok = np.flatnonzero(dr[arange, best] < threshold)
        out[ok, rank] = s_top[ok, best[ok]]
        taken[ok, best[ok]] = True
    valid = out >= 0
    order = np.argsort(~valid, axis=1, kind="stable")
    device = student_logits.device
    student = torch.as_tensor(np.take_along_axis(out, order, axis=1), device=device)
    teacher = torch.as_tensor(np.take_along_axis(np.where(valid, t_top, -1), order, axis=1), device=device)
    return student, teacher, torch.as_tensor(np.take_along_axis(valid, order, axis=1), device=device)
