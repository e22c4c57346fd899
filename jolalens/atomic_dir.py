"""Whole directories that appear complete or not at all, and pre-flight disk checks.

A run (or an edit, or an exported checkpoint) is written into a temporary sibling directory
and renamed into place only once every file is written and flushed, with a completion
marker written last. ``overwrite`` replaces the old directory only after the new one is
complete, so a failed or killed run leaves the previous one byte-identical (at worst a
hidden ``.<name>.tmp-*`` sibling is left behind, which the next run of the same output removes).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import JolaError
from .locking import pid_alive

__all__ = [
    "COMPLETE_MARKER",
    "DiskError",
    "atomic_dir",
    "check_free_space",
    "check_replaceable",
    "check_writable",
    "is_complete",
    "preflight_output",
]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".jolalens_complete"
SPACE_MARGIN = 2.0  # the free space asked for: twice the estimate (temporary copy, metadata)


class DiskError(JolaError, OSError):
    """The output directory cannot be written (permissions, read-only file system, full disk)."""


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a directory carrying the completion marker of :func:`atomic_dir`."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(out: str | Path) -> None:
    """Really create (and remove) a file next to ``out``; :class:`DiskError` if that fails.

    The probe goes into ``out``'s parent (or its nearest existing ancestor): that is where the
    temporary sibling and the lock file are written, and the rename into place happens.
    """
    where = _existing_ancestor(Path(out).absolute().parent)
    probe = where / f".jolalens-write-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        fix = "free some disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix its permissions"
        raise DiskError(f"cannot write into {where} ({exc.strerror}); {fix} or choose another --out") from exc
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def check_free_space(out: str | Path, needed_bytes: int) -> None:
    """:class:`DiskError` unless the file system of ``out`` has 2x ``needed_bytes`` free."""
    where = _existing_ancestor(Path(out))
    free = shutil.disk_usage(where).free
    want = int(SPACE_MARGIN * needed_bytes)
    if free < want:
        raise DiskError(
            f"only {free / 2**20:.1f} MiB free on the file system of {where}, need about "
            f"{want / 2**20:.1f} MiB; "
            "free some space or choose another --out"
        )


def preflight_output(out: str | Path, needed_bytes: int = 0) -> None:
    """Both checks, before any long work: the output can be written and the disk has room."""
    check_writable(out)
    check_free_space(out, needed_bytes)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _remove_leftovers(final: Path) -> None:
    """Clean up after a writer of ``final`` killed mid-way (its pid gone): remove its temporary
    sibling, and put back the previous directory if it died between the two renames."""
    for kind in ("old", "tmp"):
        for stale in sorted(final.parent.glob(f".{final.name}.{kind}-*")):
            pid = stale.name.rsplit("-", 2)[-2]
            if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
                continue
            if kind == "old" and not final.exists():
                os.rename(stale, final)
                logger.warning(
                    "restored %s from %s, left by a writer killed while replacing it",
                    final,
                    stale.name,
                )
            else:
                shutil.rmtree(stale, ignore_errors=True)


def check_replaceable(final: str | Path, *, overwrite: bool) -> None:
    """:class:`FileExistsError` for a file, or a non-empty directory without ``overwrite``."""
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        if not final.is_dir():
            raise FileExistsError(f"{final} exists and is not a directory; remove it or choose another path")
        if not overwrite:
            raise FileExistsError(
                f"{final} already exists and is not empty; choose a new directory or pass "
                "overwrite=True (--overwrite on the command line)"
            )


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def _write_failure(exc: BaseException) -> str | None:
    """Why a write failed, if it was the disk: ``OSError`` or a native writer's own error.

    safetensors reports ``... (os error 28)`` and torch ``PytorchStreamWriter failed writing
    file`` / ``basic_ios::clear: iostream error`` instead of an ``OSError``.
    """
    if isinstance(exc, JolaError):
        return None
    if isinstance(exc, OSError):
        return exc.strerror if exc.errno in _DISK_ERRNOS else None
    text = str(exc)
    found = re.search(r"os error (\d+)", text)
    if found and int(found[1]) in _DISK_ERRNOS:
        return os.strerror(int(found[1]))
    if "PytorchStreamWriter failed" in text or "iostream error" in text:
        return "the writer failed: the disk is probably full"
    return None


@contextmanager
def atomic_dir(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final``; on success it becomes ``final``.

    Existing ``final``: refused with :class:`FileExistsError` unless ``overwrite`` (an empty
    directory counts as absent); then it is replaced only after the new one is complete.
    On an exception nothing at ``final`` changes and the temporary directory is removed.
    """
    final = Path(final)
    check_replaceable(final, overwrite=overwrite)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(final)
        check_replaceable(final, overwrite=overwrite)  # again: a restored previous directory counts
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise DiskError(f"cannot create {final} ({exc.strerror}); fix permissions or choose another path") from exc
    old: Path | None = None
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"completed": time.time(), "pid": os.getpid()}) + "\n")
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            if old is not None:  # put the previous one back
                os.rename(old, final)
                old = None
            raise
    except Exception as exc:
        reason = _write_failure(exc)
        if reason is not None:
            raise DiskError(
                f"could not write {final} ({reason}); nothing there was changed. Free disk space "
                "or "
                "fix permissions, then rerun"
            ) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
