"""`keep_freed_memory`: freed logits-sized CPU tensors are reused instead of being page-faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_PROBE = """
import resource, sys, torch
from distill.cpu_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(12):  # glibc's heap settles after a few 64 MiB blocks (memalign leaves gaps at first)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20)
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, min(faults[-4:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    def probe(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        return applied, int(faults)

    pages = 64 * 2**20 // 4096
    applied, faults = probe("default")
    assert applied == "None" and faults >= pages // 2  # a fresh mmap per tensor: every page faults in again
    applied, faults = probe("keep")
    assert applied == "True" and faults < pages // 100
