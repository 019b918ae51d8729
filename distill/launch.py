"""Multi-process training for one stage: the same stage command again, under `torchrun`, in fresh processes.

A stage whose params ask for ``nproc_per_node > 1`` (a hop of ``chain``, or ``teacher_training``) does not
train in the process DVC started: it runs ``python -m torch.distributed.run --standalone --nproc_per_node N
-m distill.cli stage ...`` and waits for it. Each worker finds ``LOCAL_RANK`` in its environment, so it trains
instead of launching again; the HF Trainer wraps the model in DDP (NCCL on GPUs, gloo on CPUs) and the
trainer's loss is normalised so gradients match one process with the same global batch. Rank 0 alone writes
the model and the metrics.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["ddp_arguments", "is_worker", "launch", "rank"]


def is_worker() -> bool:
    """True inside a process that torchrun started (it sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def launch(stage_args: list[str], nproc_per_node: int) -> int:
    """Run ``distill <stage_args>`` under torchrun with ``nproc_per_node`` workers; returns its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
               "-m", "distill.cli", *stage_args]
    print("launching:", " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode


def ddp_arguments() -> dict:
    """`TrainingArguments` for this process: CPU when there is no GPU; under torchrun, DDP over NCCL (GPUs) or
    gloo (CPUs), without the unused-parameter search (every parameter takes part in every step here)."""
    import torch

    cuda = torch.cuda.is_available()
    arguments: dict = {"use_cpu": not cuda}
    if is_worker():
        arguments.update(ddp_backend="nccl" if cuda else "gloo", ddp_find_unused_parameters=False)
    return arguments
