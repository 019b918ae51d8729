"""Cross-tokenizer alignment: byte-span groups, probability merging, vocabulary maps and DTW (CDM)."""

from distill.align.merge import MERGE_STRATEGIES, merge_span_log_probs
from distill.align.spans import AlignedGroups, SpanAlignment, align_spans
from distill.align.token_bytes import TokenBytes, UnsupportedTokenizerError
from distill.align.vocab import VocabMap

__all__ = [
    "MERGE_STRATEGIES",
    "AlignedGroups",
    "SpanAlignment",
    "TokenBytes",
    "UnsupportedTokenizerError",
    "VocabMap",
    "align_spans",
    "merge_span_log_probs",
]
