"""Corpus perplexity from per-sequence negative log-likelihoods, as a local `evaluate` metric.

Given each sequence's summed NLL (nats, over its scored tokens) and its number of scored tokens:

    mean_nll   = Σ_i nll_i / Σ_i num_tokens_i          (nats per token, pooled over all tokens)
    perplexity = exp(mean_nll)

Pooling tokens (not averaging per-sequence perplexities) weights every token equally. Empty inputs, a total of
zero tokens, negative token counts or non-finite NLLs raise a `ValueError`. A mean NLL too large for `exp`
gives `perplexity = inf`.
"""

import math

import datasets

from distill.evaluation.metrics import base

_DESCRIPTION = __doc__
_INPUTS = """
Args:
    nll: list of float, summed negative log-likelihood of each sequence (nats).
    num_tokens: list of int, scored tokens in each sequence.
Returns:
    {"perplexity": float, "mean_nll": float, "num_tokens": int}
"""


class PerplexityFromNll(base.CheckedMetric):
    NAME = "perplexity_from_nll"
    INPUTS = ("nll", "num_tokens")
    DESCRIPTION = _DESCRIPTION
    INPUTS_DESCRIPTION = _INPUTS
    FEATURES = datasets.Features({"nll": datasets.Value("float64"), "num_tokens": datasets.Value("int64")})

    def _compute(self, nll, num_tokens) -> dict:
        if min(num_tokens) < 0:
            raise ValueError(f"perplexity_from_nll: negative token count {min(num_tokens)}")
        if not all(math.isfinite(x) for x in nll):
            raise ValueError("perplexity_from_nll: non-finite NLL")
        tokens = sum(num_tokens)
        if tokens == 0:
            raise ValueError("perplexity_from_nll: zero tokens in all; perplexity is undefined")
        mean_nll = math.fsum(nll) / tokens
        try:
            perplexity = math.exp(mean_nll)
        except OverflowError:
            perplexity = math.inf
        return {"perplexity": perplexity, "mean_nll": mean_nll, "num_tokens": tokens}
