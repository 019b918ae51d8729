"""DistillTrainer across processes: a run killed with SIGKILL resumes to the same weights; two DDP processes
take the same step as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.data.tokenizers import save_tokenizer
from tests.helpers import cumsum_dataset, tiny_llama

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer_pair):
    work = tmp_path_factory.mktemp("tiny")
    student_tok, teacher_tok = tokenizer_pair
    for name, tok, hidden in (("student", student_tok, 32), ("teacher", teacher_tok, 64)):
        tiny_llama(tok, hidden=hidden, seed=1).save_pretrained(work / name)
        save_tokenizer(tok, work / name)
    cumsum_dataset(64).save_to_disk(str(work / "data"))
    return work


def _run(*args, torchrun: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] \
        if torchrun else [sys.executable]
    result = subprocess.run([*launcher, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def _final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "final" / "model.safetensors"))


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights(workdir, tmp_path):
    _run(workdir, tmp_path / "straight")
    killed = _run(workdir, tmp_path / "killed", "--kill-at", 3, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL
    assert (tmp_path / "killed" / "checkpoint-2").exists() and not (tmp_path / "killed" / "final").exists()
    _run(workdir, tmp_path / "killed", "--resume")
    straight, resumed = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


@pytest.mark.slow
def test_two_ddp_processes_match_one_process_with_the_same_global_batch(workdir, tmp_path):
    _run(workdir, tmp_path / "one", "--steps", 1, "--lmbda", 0, "--batch-size", 8, "--save-steps", 100)
    _run(workdir, tmp_path / "two", "--steps", 1, "--lmbda", 0, "--batch-size", 4, "--save-steps", 100,
         torchrun=True)
    one, two = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    initial = load_file(str(workdir / "student" / "model.safetensors"))
    moved = sum(float((one[n] - initial[n]).abs().sum()) for n in one)
    assert moved > 0
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), name
