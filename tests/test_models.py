"""Model building, atomic saving (safetensors + a tokenizer that round-trips) and loading, all offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from tokenizers import Tokenizer, normalizers
from transformers import AutoModelForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2ForCausalLM, pipeline

import distill.models as models_module
from distill.data.tokenizers import (
    ROUND_TRIP_PROBE,
    TokenizerRoundTripError,
    sample_corpus,
    train_byte_level_bpe,
    train_metaspace_unigram,
)
from distill.models import DEMO_CHAIN, ModelSpec, build_model, count_parameters, load_model, save_model

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}
CLASSES = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}


@pytest.fixture(scope="module")
def qwen_like_tokenizer(bpe_tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The byte-level BPE fixture plus an NFC normalizer: what transformers 5's Qwen2Tokenizer rebuilds it into."""
    backend = Tokenizer.from_str(bpe_tokenizer.backend_tokenizer.to_str())
    backend.normalizer = normalizers.NFC()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>")


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    texts = ["Alice reads the book.", "def f(x):\n    return x + 1"]
    return tokenizer(texts, return_tensors="pt", padding=True)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_build_each_family(family: str, bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    spec = ModelSpec(family=family, **TINY)
    state = torch.random.get_rng_state()
    model = build_model(spec, bpe_tokenizer, seed=3)
    assert torch.equal(state, torch.random.get_rng_state()), "build_model must not consume the global RNG"
    assert isinstance(model, CLASSES[family])
    assert model.config.vocab_size == len(bpe_tokenizer)
    assert model.config.eos_token_id == bpe_tokenizer.eos_token_id
    assert model.config.pad_token_id == bpe_tokenizer.pad_token_id
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied
    batch = _batch(bpe_tokenizer)
    assert _logits(model, batch).shape == (*batch["input_ids"].shape, len(bpe_tokenizer))
    same = build_model(spec, bpe_tokenizer, seed=3)
    other = build_model(spec, bpe_tokenizer, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)
    embeddings = len(bpe_tokenizer) * spec.hidden_size
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > embeddings


def test_model_spec_validation() -> None:
    with pytest.raises(ValidationError, match="num_heads"):
        ModelSpec(hidden_size=30, num_heads=4)
    with pytest.raises(ValidationError, match="num_kv_heads"):
        ModelSpec(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValidationError, match="extra"):
        ModelSpec(layers=2)
    with pytest.raises(ValidationError, match="family"):
        ModelSpec(family="gpt2")


@pytest.mark.parametrize(("family", "tokenizer_name"), [("llama", "bpe"), ("llama", "unigram"), ("qwen2", "qwen_like")])
def test_save_load_round_trip(tmp_path: Path, request: pytest.FixtureRequest, family: str, tokenizer_name: str) -> None:
    tokenizer = request.getfixturevalue(f"{tokenizer_name}_tokenizer")
    model = build_model(ModelSpec(family=family, **TINY), tokenizer, seed=1)
    path = save_model(model, tokenizer, tmp_path / "model")
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert _leftovers(tmp_path, "model") == []

    loaded, loaded_tokenizer = load_model(path)
    assert isinstance(loaded, CLASSES[family]) and not loaded.training
    assert loaded_tokenizer.encode(ROUND_TRIP_PROBE) == tokenizer.encode(ROUND_TRIP_PROBE)
    batch = _batch(tokenizer)
    torch.testing.assert_close(_logits(loaded, batch), _logits(model, batch), rtol=0, atol=1e-6)
    plain = AutoModelForCausalLM.from_pretrained(str(path))
    torch.testing.assert_close(_logits(plain, batch), _logits(model, batch), rtol=0, atol=1e-6)

    half, _ = load_model(path, dtype=torch.bfloat16, device="cpu")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_pipeline_generates_from_saved_folder(
    tmp_path: Path, unigram_tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = save_model(build_model(ModelSpec(**TINY), unigram_tokenizer), unigram_tokenizer, tmp_path / "m")
    generator = pipeline("text-generation", model=str(path), device="cpu")
    out = generator("Alice reads the book", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("Alice reads the book")


def test_qwen2_with_metaspace_is_refused_and_old_folder_survives(
    tmp_path: Path, unigram_tokenizer: PreTrainedTokenizerFast
) -> None:
    path = tmp_path / "student"
    old = build_model(ModelSpec(**TINY), unigram_tokenizer, seed=0)
    save_model(old, unigram_tokenizer, path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    qwen = build_model(ModelSpec(family="qwen2", **TINY), unigram_tokenizer, seed=1)
    with pytest.raises(TokenizerRoundTripError, match=r"family='llama'"):
        save_model(qwen, unigram_tokenizer, path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert _leftovers(tmp_path, "student") == []


def test_atomic_save_on_failure(
    tmp_path: Path, bpe_tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "teacher"
    save_model(build_model(ModelSpec(**TINY), bpe_tokenizer, seed=0), bpe_tokenizer, path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken_save_tokenizer(tokenizer, folder):
        (Path(folder) / "tokenizer.json").write_text("{half", encoding="utf-8")
        raise OSError("disk full")

    monkeypatch.setattr(models_module, "save_tokenizer", broken_save_tokenizer)
    new = build_model(ModelSpec(**TINY), bpe_tokenizer, seed=1)
    with pytest.raises(OSError, match="disk full"):
        save_model(new, bpe_tokenizer, path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    with pytest.raises(OSError, match="disk full"):
        save_model(new, bpe_tokenizer, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]

    monkeypatch.undo()
    save_model(new, bpe_tokenizer, path)  # replacing an existing folder works and leaves nothing behind
    reloaded = AutoModelForCausalLM.from_pretrained(str(path))
    assert torch.equal(reloaded.lm_head.weight, new.lm_head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def test_save_refuses_a_vocabulary_larger_than_the_model(
    tmp_path: Path, bpe_tokenizer: PreTrainedTokenizerFast
) -> None:
    small = train_byte_level_bpe(sample_corpus(60), 300)
    model = build_model(ModelSpec(**TINY), small)
    with pytest.raises(ValueError, match="embedding rows"):
        save_model(model, bpe_tokenizer, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("vocab_size", [600, 1000])
def test_demo_chain_sizes(vocab_size: int) -> None:
    for tokenizer in (
        train_byte_level_bpe(sample_corpus(), vocab_size),
        train_metaspace_unigram(sample_corpus(), vocab_size),
    ):
        sizes = [count_parameters(build_model(DEMO_CHAIN[k], tokenizer)) for k in ("teacher", "bridge", "student")]
        assert sizes[0] > sizes[1] > sizes[2]
        assert sizes[0] >= 8 * sizes[2]
        assert 1_000_000 <= sizes[0] <= 3_000_000 and 100_000 <= sizes[2] <= 300_000
        assert max(sizes[0] / sizes[1], sizes[1] / sizes[2]) < 3.1  # one bridge: hops of about 3x
