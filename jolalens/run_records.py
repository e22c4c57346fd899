"""Reading and writing the small JSON/text records of a comparison so that damage is survivable.

A damaged record (truncated by a full disk, hand-edited, half-copied) is reported with its
path and treated as absent, so the run it describes is recomputed instead of crashing every
later command; writing a record on a full disk fails without leaving a 0-byte file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .fileio import atomic_path

__all__ = ["read_record", "write_text_safely"]

logger = logging.getLogger(__name__)


def read_record(
    path: str | Path, required: Iterable[str] = (), log: Callable[[str], None] | None = None
) -> dict[str, Any] | None:
    """The JSON object at ``path``, or ``None`` (reported through ``log``) if absent or damaged.

    Damaged: not UTF-8, not JSON, not an object, or missing one of the ``required`` keys.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"unreadable ({exc})"
    else:
        missing = [k for k in required if not isinstance(data, dict) or k not in data]
        if isinstance(data, dict) and not missing:
            return data
        problem = "not a JSON object" if not isinstance(data, dict) else f"lacks {missing}"
    message = f"  damaged record {path}: {problem}; recomputing what it described"
    logger.warning(message)
    if log is not None:
        log(message)
    return None


def write_text_safely(path: str | Path, text: str, log: Callable[[str], None] | None = None) -> bool:
    """Write ``text`` atomically; on an ``OSError`` (full disk ...) report it and return ``False``.

    For records whose loss must not end the command (a failed run's traceback): the failure
    is logged and the command goes on, and no partial file is left behind.
    """
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        message = (
            f"  could not write {path} ({exc.strerror or exc}); the run counts as not done and is retried next time"
        )
        logger.warning(message)
        if log is not None:
            log(message)
        return False
    return True
