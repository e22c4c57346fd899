"""Atomic file writes, safe when several processes write the same file at once.

The comparison grid runs many workers that share one task-data cache and one results tree; a
temporary name of their own per writer means no writer renames another's half-written file,
and readers only ever see a whole file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path, unique to this call, that replaces ``path`` when the block succeeds.

    Write the file to the yielded path inside the ``with`` block; on an exception ``path`` is
    left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
