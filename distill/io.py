"""Writing artifacts so that they appear complete or not at all.

`atomic_directory(path)` yields a fresh sibling staging folder; when the block ends without error the staging
folder replaces `path` (the old one is moved aside first and removed after), otherwise it is deleted and the
old `path` stays untouched. `atomic_write_bytes` and `write_json` write through a flushed temp file and `os.replace`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield staging
        aside = None
        if path.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, aside / path.name)
        try:
            os.replace(staging, path)
        except BaseException:
            if aside is not None:  # put the old folder back; if even that fails, it stays in `aside`
                os.replace(aside / path.name, path)
                aside.rmdir()
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write `data` to `path` via a flushed temporary file in the same folder and `os.replace` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _plain(value):
    """JSON-safe: non-finite floats become null (JSON has no NaN), keys strings, paths strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, data) -> Path:
    """Indented, key-sorted JSON (non-finite floats as null), written atomically."""
    text = json.dumps(_plain(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_bytes(text.encode("utf-8"), path)
