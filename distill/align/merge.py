"""Merging the per-token distributions inside an aligned span group into one distribution per group.

A group covers tokens x₁…x_m on one side (consecutive rows of `logp`, with `logp[k]` the distribution that
predicted token x_k). Two strategies turn the m rows into one row over the vocabulary:

- `"bayesian"` (default, the chain rule): the joint probability of the realised prefix and the next token,
      m(v) = p_m(v) · Π_{k<m} p_k(x_k)
  i.e. the last position's full distribution (conditioned on the realised prefix) times the probabilities of
  the realised earlier tokens. Exact: m(x_m) is the probability of the whole group's text.
- `"observed"`: the first position's distribution times the realised later tokens' probabilities,
      m(v) = p_1(v) · Π_{k>1} p_k(x_k)
  (TRL's default; the later factors were conditioned on x₁, not on v, hence the counterfactual bias).

Both return *unnormalised* rows (total mass Π of the scalar factors ≤ 1), in log space: `[G, V]`.
"""

from __future__ import annotations

from typing import Literal

import torch

MergeStrategy = Literal["bayesian", "observed"]
MERGE_STRATEGIES: tuple[str, ...] = ("bayesian", "observed")


def check_strategy(strategy: str) -> None:
    if strategy not in MERGE_STRATEGIES:
        raise ValueError(f"merge strategy must be one of {MERGE_STRATEGIES}, got {strategy!r}")


def base_rows(group_of_row: torch.Tensor, strategy: MergeStrategy) -> torch.Tensor:
    """Bool `[n]`: the row whose full distribution a group keeps (last for bayesian, first for observed).

    `group_of_row [n]` must be non-decreasing: a group's rows are consecutive.
    """
    check_strategy(strategy)
    if group_of_row.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=group_of_row.device)
    edge = group_of_row[1:] != group_of_row[:-1]
    one = torch.ones(1, dtype=torch.bool, device=group_of_row.device)
    return torch.cat([edge, one]) if strategy == "bayesian" else torch.cat([one, edge])


def merge_span_log_probs(
    logp: torch.Tensor,
    realised_ids: torch.Tensor,
    group_of_row: torch.Tensor,
    strategy: MergeStrategy = "bayesian",
) -> torch.Tensor:
    """Merge consecutive rows of each group: `logp [n, V]`, `realised_ids [n]`, `group_of_row [n]` → `[G, V]`.

    `group_of_row` numbers the groups 0..G-1, non-decreasing. Single-row groups are returned unchanged.
    Vectorised: the scalar factors are summed per group with one `index_add` in log space.
    """
    is_base = base_rows(group_of_row, strategy)
    if bool(is_base.all()):  # every group is one token: nothing to merge, no copy
        return logp
    num_groups = int(is_base.sum())
    realised = logp.gather(-1, realised_ids.unsqueeze(-1)).squeeze(-1)
    scalar = torch.zeros(num_groups, dtype=logp.dtype, device=logp.device)
    scalar = scalar.index_add(0, group_of_row[~is_base], realised[~is_base])
    # index_select + in-place add: a boolean row mask would be ~1.7x slower on the CPU (bench/RESULTS.md), and
    # index_select's backward needs only the index, so adding in place is safe under autograd
    return logp.index_select(0, is_base.nonzero().squeeze(-1)).add_(scalar.unsqueeze(-1))
