"""Plain float64 reference implementations of the losses, written from the formulas with explicit loops.

Slow and obvious on purpose: the library's chunked, vectorised versions are tested against these.
"""

from __future__ import annotations

import math

import torch


def probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.softmax(logits.double() / temperature, dim=-1)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    total = p.new_zeros(())
    for v in range(p.shape[-1]):
        if p[v] > 0:
            total = total + p[v] * (torch.log(p[v]) - torch.log(q[v]))
    return total


def jsd(ps: torch.Tensor, pt: torch.Tensor, beta: float) -> torch.Tensor:
    if beta == 0:
        return kl(pt, ps)
    if beta == 1:
        return kl(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * kl(pt, m) + (1 - beta) * kl(ps, m)


def sorted_l1(ps: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
    a = torch.sort(ps, descending=True).values
    b = torch.sort(pt, descending=True).values
    n = max(a.numel(), b.numel())
    a = torch.cat([a, a.new_zeros(n - a.numel())])
    b = torch.cat([b, b.new_zeros(n - b.numel())])
    return sum(abs(a[r] - b[r]) for r in range(n))


ROW = {
    "forward_kl": lambda ps, pt: kl(pt, ps),
    "reverse_kl": lambda ps, pt: kl(ps, pt),
    "jsd": lambda ps, pt, beta=0.5: jsd(ps, pt, beta),
    "skew_kl": lambda ps, pt, alpha=0.1: kl(pt, alpha * pt + (1 - alpha) * ps),
    "skew_reverse_kl": lambda ps, pt, alpha=0.1: kl(ps, (1 - alpha) * pt + alpha * ps),
    "tvd": lambda ps, pt: 0.5 * (pt - ps).abs().sum(),
    "uld": sorted_l1,
}


def token_loss(name: str, student_logits, teacher_logits, mask, temperature=1.0, **kw) -> torch.Tensor:
    """Mean over masked positions of a row loss between tempered softmaxes."""
    values = []
    for b in range(student_logits.shape[0]):
        for t in range(student_logits.shape[1]):
            if mask[b, t]:
                ps = probs(student_logits[b, t], temperature)
                pt = probs(teacher_logits[b, t], temperature)
                values.append(ROW[name](ps, pt, **kw))
    return torch.stack(values).mean()


def sparse_forward_kl(student_logits, ids, logprobs, mask) -> torch.Tensor:
    values = []
    for b in range(student_logits.shape[0]):
        for t in range(student_logits.shape[1]):
            if mask[b, t]:
                ps = probs(student_logits[b, t])
                pt_top = logprobs[b, t].double().exp()
                ps_top = ps[ids[b, t]]
                pt = torch.cat([pt_top, (1 - pt_top.sum()).clamp(min=0).reshape(1)])
                qs = torch.cat([ps_top, (1 - ps_top.sum()).reshape(1)])
                values.append(kl(pt, qs))
    return torch.stack(values).mean()


def merged(logp_rows: torch.Tensor, ids: list[int], strategy: str) -> torch.Tensor:
    """Probability row of a span group: chain rule (bayesian) or first row times later tokens (observed)."""
    base = logp_rows[-1] if strategy == "bayesian" else logp_rows[0]
    scalars = range(len(ids) - 1) if strategy == "bayesian" else range(1, len(ids))
    out = base.exp()
    for k in scalars:
        out = out * logp_rows[k, ids[k]].exp()
    return out


def group_rows(student_logits, teacher_logits, student_group, teacher_group, student_ids, teacher_ids, strategy):
    """Yield (merged student probs, merged teacher probs) per group with tokens on both sides."""
    for b in range(student_logits.shape[0]):
        ls, lt = student_logits[b].double().log_softmax(-1), teacher_logits[b].double().log_softmax(-1)
        for g in range(int(max(student_group[b].max(), teacher_group[b].max())) + 1):
            si = [i for i in range(ls.shape[0]) if student_group[b, i] == g]
            ti = [j for j in range(lt.shape[0]) if teacher_group[b, j] == g]
            if si and ti:
                yield (merged(ls[si], [int(student_ids[b, i]) for i in si], strategy),
                       merged(lt[ti], [int(teacher_ids[b, j]) for j in ti], strategy))


def gold_row(ps, pt, s_matched, t_matched, beta, w_m, w_u):
    s_m, t_m = ps[s_matched], pt[t_matched]
    s_b = torch.cat([s_m, (1 - s_m.sum()).reshape(1)])
    t_b = torch.cat([t_m, (1 - t_m.sum()).reshape(1)])
    s_rest = torch.tensor([v for v in range(ps.numel()) if v not in set(s_matched.tolist())])
    t_rest = torch.tensor([v for v in range(pt.numel()) if v not in set(t_matched.tolist())])
    matched = jsd(s_b, t_b, beta)
    unmatched = sorted_l1(ps[s_rest], pt[t_rest])
    return w_m * matched + w_u * unmatched, matched, unmatched


def entropy(p: torch.Tensor) -> float:
    return -sum(float(x) * math.log(float(x)) for x in p if x > 0)
