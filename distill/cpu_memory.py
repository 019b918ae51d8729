"""Keep freed CPU memory in the process for reuse (glibc malloc) instead of handing it back to the OS.

PyTorch's CPU tensors are plain `malloc`/`free`. glibc serves a block of 32 MiB or more (and smaller ones once
the top of its heap has been trimmed) with a fresh `mmap`, so every logits-sized tensor of a CPU training step
(the logits and their gradient, a loss chunk's softmax) is page-faulted in again, one zeroed page at a time. On
the bench machine a softmax into a fresh 48 MB tensor took 28 ms against 7.5 ms into reused memory, and the
GOLD loss ran 1.8x slower for that alone (bench/RESULTS.md).

`keep_freed_memory()` makes glibc serve every block from its heap (`M_MMAP_MAX = 0`) and never trim that heap
(`M_TRIM_THRESHOLD`): freed blocks are reused as they are. The process then keeps its peak heap until it exits,
as a GPU caching allocator keeps device memory. It is what starting Python with `MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=<large>` does, in the spirit of the CPU tuning guides' advice to preload jemalloc or
tcmalloc. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: a free heap top below 2 GiB is never trimmed


def keep_freed_memory() -> bool:
    """Switch glibc to heap-only allocation without trimming; True if it took effect (glibc), False otherwise."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
