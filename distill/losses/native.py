"""The compiled ULD bins kernel (`uld_bins.cpp`): built with the system's C++ compiler on first use, cached, and
called through ctypes; None where it cannot be built, and the torch route of `sorting.py` is used instead.

The kernel does per row what `sorting._binned` does with whole-tensor passes, in a few loops over the row's
entries that keep its bin tables in cache; rows are split over `torch.get_num_threads()` threads (ctypes releases
the GIL during the call). `DISTILL_NATIVE=0` turns it off; `DISTILL_NATIVE_CACHE` (default
`~/.cache/distill/native`) is where the library is kept, one file per source and compiler version; `CXX` picks the
compiler (default `c++`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("uld_bins.cpp")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")
#: Rows per thread below which a call stays on one thread.
MIN_ROWS_PER_THREAD = 16


def enabled() -> bool:
    return os.environ.get("DISTILL_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    return Path(os.environ.get("DISTILL_NATIVE_CACHE") or Path.home() / ".cache" / "distill" / "native")


@functools.cache
def library(directory: str | None = None) -> ctypes.CDLL | None:
    """The loaded kernel, built into `directory` (default `cache_dir()`) if not there yet; None (with one warning
    saying why) when it cannot be built or loaded."""
    compiler = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60,
                                 check=True).stdout
        tag = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *FLAGS, version)).encode()).hexdigest()[:16]
        folder = Path(directory) if directory else cache_dir()
        path = folder / f"uld_bins-{tag}.so"
        if not path.exists():
            _build(compiler, folder, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        warnings.warn(f"ULD: the compiled bins kernel is unavailable ({str(detail).strip()[-500:]}); using the "
                      "torch route, slower on the CPU. Set DISTILL_NATIVE=0 to silence this.", stacklevel=3)
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for name in ("uld_rows_f32", "uld_rows_f64"):
        function = getattr(lib, name)
        function.argtypes = [pointer, pointer, size, size, size, pointer, pointer]
        function.restype = ctypes.c_int
    return lib


def _build(compiler: str, folder: Path, path: Path) -> None:
    """Compile into a temporary file beside `path` and rename it into place: a concurrent build by another
    process, or one killed half-way, never leaves a partial library under the final name."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as staging:
        built = Path(staging) / path.name
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True,
                       timeout=600, check=True)
        os.replace(built, path)


def negative_values(side: str) -> ValueError:
    """The error of both routes for rows that are not probabilities."""
    return ValueError(f"sorted_l1_rows takes probabilities: the {side} rows hold negative values")


def sorted_l1(s: torch.Tensor, t: torch.Tensor, want_signs: bool) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """`(value [n], signs [n, Vs] or None)` as `sorting._binned` returns them, from the kernel; None when the kernel
    is off or unavailable, or the dtype is not float32/float64 (the caller then takes the torch route). Raises
    the torch route's error for negative entries."""
    if s.dtype not in (torch.float32, torch.float64) or not enabled():
        return None
    lib = library()
    if lib is None:
        return None
    s, t = s.contiguous(), t.contiguous()
    n, vs, vt = s.shape[0], s.shape[1], t.shape[1]
    value = torch.empty(n, dtype=torch.float64)
    signs = torch.empty_like(s) if want_signs else None
    function = lib.uld_rows_f32 if s.dtype == torch.float32 else lib.uld_rows_f64
    row_bytes = (vs * s.element_size(), vt * t.element_size(), 8)

    def run(start: int, stop: int) -> int:
        return function(s.data_ptr() + start * row_bytes[0], t.data_ptr() + start * row_bytes[1], stop - start,
                        vs, vt, value.data_ptr() + start * row_bytes[2],
                        None if signs is None else signs.data_ptr() + start * row_bytes[0])

    threads = max(1, min(torch.get_num_threads(), n // MIN_ROWS_PER_THREAD))
    if threads == 1:
        statuses = [run(0, n)]
    else:
        bounds = [n * i // threads for i in range(threads + 1)]
        with ThreadPoolExecutor(threads) as pool:
            statuses = list(pool.map(run, bounds[:-1], bounds[1:]))
    if any(statuses):
        raise negative_values("student" if 1 in statuses else "teacher")
    return value.to(s.dtype), signs
