"""An exclusive lock per output directory, so that two commands never write one directory at once.

The lock is ``fcntl.flock`` on a sibling file ``.<name>.jolalens.lock`` next to the output
directory (a sibling, not a file inside it, because training and export replace their whole
output directory by a rename). The kernel drops a ``flock`` when its holder dies, so a lock
left by a killed process is free again; the file keeps the holder's pid, host and start time
so that a refused command can name who holds it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import JolaError

__all__ = ["LockError", "lock_path", "output_lock", "pid_alive", "read_holder"]

logger = logging.getLogger(__name__)


class LockError(JolaError):
    """Another process holds the output directory's lock."""


def lock_path(out: str | Path) -> Path:
    """The lock file of output directory ``out``: ``<parent>/.<name>.jolalens.lock``."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.jolalens.lock"


def read_holder(path: str | Path) -> dict[str, Any] | None:
    """The pid/host/start time recorded in a lock file (``None`` if absent or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (holder unknown)"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, int | float) else "?"
    command = holder.get("command", "?")
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {when}: {command})"


@contextmanager
def output_lock(out: str | Path, command: str = "jolalens", *, shared: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of output directory ``out`` for the ``with`` block.

    Raises :class:`LockError` naming the holder if another live process has it. A lock file
    whose recorded holder is dead on this host is taken over (logged as a stale lock).
    ``shared``: several cooperating holders at once (each then locks its own part, e.g. one
    comparison run), still excluding every exclusive holder.
    """
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LockError(
            f"cannot create the lock file {path} ({exc.strerror}); make {path.parent} writable or choose another --out"
        ) from exc
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LockError(
                f"{Path(out)} is in use by {_describe(read_holder(path))}; wait for it to finish "
                "or choose another --out (one command per output directory)"
            ) from None
        old = read_holder(path)
        if (
            old
            and not shared
            and old.get("host") == socket.gethostname()
            and isinstance(old.get("pid"), int)
            and not pid_alive(old["pid"])
        ):
            logger.warning("recovered a stale lock on %s left by dead %s", out, _describe(old))
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": command,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError:  # e.g. a full disk: the lock holds all the same, only the holder goes unnamed
            logger.warning("could not record the lock holder in %s", path)
        try:
            yield path
        finally:
            if not shared:  # a shared lock may still have other holders to name
                try:
                    os.ftruncate(fd, 0)  # released: no holder to name any more
                except OSError:
                    pass
    finally:
        os.close(fd)  # closing releases the flock
