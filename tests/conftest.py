"""Shared pytest fixtures: two small, deliberately different tokenizers trained on the built-in corpus."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from distill.data.tokenizers import sample_corpus, train_byte_level_bpe, train_metaspace_unigram

TOKENIZER_VOCAB_SIZE = 600


@pytest.fixture(scope="session")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2/Qwen style byte-level BPE (~600 tokens); the usual teacher side."""
    return train_byte_level_bpe(sample_corpus(), TOKENIZER_VOCAB_SIZE)


@pytest.fixture(scope="session")
def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece/Llama style Metaspace Unigram with byte fallback (~600 tokens); the usual student side."""
    return train_metaspace_unigram(sample_corpus(), TOKENIZER_VOCAB_SIZE)


@pytest.fixture(scope="session")
def tokenizer_pair(
    unigram_tokenizer: PreTrainedTokenizerFast, bpe_tokenizer: PreTrainedTokenizerFast
) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """``(student, teacher)`` with different tokenizers: (Metaspace Unigram, byte-level BPE)."""
    return unigram_tokenizer, bpe_tokenizer


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect server (SQLite in a temp dir) for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def moto_server():
    """One S3-compatible server process (moto's) on 127.0.0.1 and a free port for the whole test run; tests reset
    it (`moto_server.reset(bucket)`) before use."""
    from tests.s3 import MotoServer

    server = MotoServer()
    yield server
    server.stop()
