"""The offline teacher signal: the teacher's top-k log-probabilities on the off-policy data, computed once.

Off-policy batches (λ = 0, or the off-policy share of a mixed run) always show the teacher the same text, so its
distribution there can be cached instead of recomputed every epoch. A cache is a folder of safetensors shards
plus `manifest.json` (teacher, tokenizer fingerprint, temperature, k, rows); it is written atomically and checked
against the run at load time, with an error naming the field that differs. Same tokenizer only: the cached ids
are student ids, consumed by `losses.sparse_forward_kl` (top-k + one tail bucket).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from distill.data.collate import prompt_of, side_batch
from distill.data.tokenize import encode_example
from distill.io import atomic_directory

MANIFEST = "manifest.json"
FORMAT = 1


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, merges, normalizer...) and its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((spec + json.dumps(tokenizer.all_special_tokens)).encode()).hexdigest()


@torch.no_grad()
def build_teacher_cache(teacher, tokenizer, dataset, out_dir: str | Path, *, k: int = 32, temperature: float = 1.0,
                        batch_size: int = 16, teacher_name: str = "teacher", rows_per_shard: int = 8192) -> Path:
    """Run `teacher` over every row's reference completion and store, per completion target, the top-`k` ids and
    log-probabilities of softmax(z / temperature). Returns the cache folder."""
    if k < 1:
        raise ValueError(f"build_teacher_cache: k must be >= 1, got {k}")
    out_dir = Path(out_dir)
    device = next(teacher.parameters()).device
    teacher.eval()
    with atomic_directory(out_dir) as staging:
        shards, ids_acc, lp_acc, lengths, row_ids = [], [], [], [], []
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            encoded = [encode_example(tokenizer, prompt_of(r), r["completion"]) for r in rows]
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            batch = side_batch([e.input_ids[: e.prompt_length] for e in encoded],
                               [e.input_ids[e.prompt_length:] for e in encoded], pad)
            logits = teacher(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                             use_cache=False).logits.float()
            top = torch.log_softmax(logits / temperature, dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
            mask = batch.target_mask.to(device)
            for b, row in enumerate(rows):
                ids_acc.append(top.indices[b][mask[b]].to(torch.int32).cpu())
                lp_acc.append(top.values[b][mask[b]].cpu())
                lengths.append(int(mask[b].sum()))
                row_ids.append(str(row.get("id", start + b)))
            if len(lengths) >= rows_per_shard or start + batch_size >= len(dataset):
                shards.append(_write_shard(staging, len(shards), ids_acc, lp_acc, lengths, row_ids))
                ids_acc, lp_acc, lengths, row_ids = [], [], [], []
        manifest = {"format": FORMAT, "teacher": teacher_name, "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
                    "temperature": temperature, "k": min(k, teacher.config.vocab_size), "rows": len(dataset),
                    "shards": shards}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _write_shard(folder: Path, index: int, ids, logprobs, lengths, row_ids) -> dict:
    name = f"shard-{index:05d}.safetensors"
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    save_file({"ids": torch.cat(ids), "logprobs": torch.cat(logprobs), "offsets": offsets}, str(folder / name))
    return {"file": name, "row_ids": row_ids}


class TeacherCache:
    """A loaded cache: `batch(row_ids, target_mask)` gives `[B, L, k]` ids and log-probs at the scored positions."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path, self.manifest = path, manifest
        self.k = int(manifest["k"])
        self._index: dict[str, tuple[int, int]] = {}
        for s, shard in enumerate(manifest["shards"]):
            for r, row_id in enumerate(shard["row_ids"]):
                self._index[row_id] = (s, r)
        self._shards: dict[int, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(cls, path: str | Path, tokenizer, *, temperature: float | None = None) -> TeacherCache:
        path = Path(path)
        manifest_file = path / MANIFEST
        if not manifest_file.exists():
            raise FileNotFoundError(f"teacher cache {path}: no {MANIFEST} (not a cache, or an unfinished build)")
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"teacher cache {path}: format {manifest.get('format')!r}, expected {FORMAT}")
        if manifest["tokenizer_sha256"] != tokenizer_fingerprint(tokenizer):
            raise ValueError(f"teacher cache {path}: tokenizer differs from the run's (tokenizer_sha256 mismatch); "
                             "cached ids would mean other tokens — rebuild the cache")
        if temperature is not None and abs(manifest["temperature"] - temperature) > 1e-9:
            raise ValueError(f"teacher cache {path}: temperature {manifest['temperature']} != the run's {temperature}")
        return cls(path, manifest)

    def _shard(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._shards:
            self._shards[index] = load_file(str(self.path / self.manifest["shards"][index]["file"]))
        return self._shards[index]

    def row(self, row_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        if row_id not in self._index:
            raise KeyError(f"teacher cache {self.path}: row id {row_id!r} is not in the cache "
                           f"({self.manifest['rows']} rows); rebuild it for this dataset")
        s, r = self._index[row_id]
        shard = self._shard(s)
        lo, hi = int(shard["offsets"][r]), int(shard["offsets"][r + 1])
        return shard["ids"][lo:hi].long(), shard["logprobs"][lo:hi]

    def batch(self, row_ids: list[str], target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*target_mask.shape, self.k)
        ids = torch.zeros(shape, dtype=torch.long)
        logprobs = torch.full(shape, -torch.inf)
        for b, row_id in enumerate(row_ids):
            row_ids_k, row_lp = self.row(row_id)
            positions = target_mask[b].nonzero().squeeze(-1).cpu()
            if positions.numel() != row_ids_k.shape[0]:
                raise ValueError(f"teacher cache {self.path}: row {row_id!r} has {row_ids_k.shape[0]} cached targets "
                                 f"but the batch has {positions.numel()} (tokenization changed?)")
            ids[b, positions] = row_ids_k
            logprobs[b, positions] = row_lp
        return ids.to(target_mask.device), logprobs.to(target_mask.device)
