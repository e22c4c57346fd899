"""One-line command-line errors: every expected failure becomes ``jolalens: error: ...`` and exit 2.

Expected failures are jolalens' own errors, ``ValueError`` from option validation, ``OSError``
(permissions, full disk, missing files), undecodable text and damaged safetensors files.
Anything else is a bug: one line too (exit 3), with the traceback under ``-v``.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback

from .errors import JolaError

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "add_verbose_flag",
    "describe_error",
    "report_error",
]

EXIT_ERROR = 2  # bad input or environment: the message says what to fix
EXIT_INTERNAL = 3  # an unexpected exception (a bug): rerun with -v and report it
EXIT_INTERRUPTED = 130

_OS_FIXES = {
    errno.ENOSPC: "free some disk space or choose another --out",
    errno.EDQUOT: "free some space under your quota or choose another --out",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.EACCES: "fix the permissions or choose another path",
    errno.EPERM: "fix the permissions or choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a parent of the path is a file: check the path",
    errno.EISDIR: "give a file, not a directory",
}


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def describe_error(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or ``None`` for an unexpected one."""
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text (byte {exc.start + 1} of what was read: {exc.reason}); save it as UTF-8"
    if isinstance(exc, JolaError | FileExistsError):
        return _one_line(str(exc))
    if type(exc).__name__ == "SafetensorError":
        detail = _one_line(str(exc))
        return f"a safetensors file is damaged or truncated ({detail}); retrain or restore the edit"
    if isinstance(exc, OSError):
        what = exc.strerror or _one_line(str(exc)) or type(exc).__name__
        where = f": {exc.filename}" if exc.filename else ""
        fix = _OS_FIXES.get(exc.errno or -1, "check the path and the disk")
        return f"{what}{where}; {fix}"
    if isinstance(exc, ValueError):
        return _one_line(str(exc)) or "invalid value"
    return None


def _has_verbose(parser: argparse.ArgumentParser) -> bool:
    return any("--verbose" in a.option_strings for a in parser._actions)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` (a count) on the parser, unless it has one, and on every sub-command,
    so that ``jolalens -v train ...`` and ``jolalens train ... -v`` both show tracebacks."""
    if not _has_verbose(parser):
        parser.add_argument("-v", "--verbose", action="count", default=0, help="show the traceback of an error")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not _has_verbose(sub):
                    sub.add_argument(
                        "-v",
                        "--verbose",
                        action="count",
                        default=argparse.SUPPRESS,
                        help="show the traceback of an error",
                    )


def report_error(exc: BaseException, *, verbose: bool) -> int:
    """Print the one-line message (and the traceback if ``verbose``); return the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        sys.stderr.write("jolalens: interrupted\n")
        return EXIT_INTERRUPTED
    message = describe_error(exc)
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    if message is None:
        sys.stderr.write(
            f"jolalens: internal error: {type(exc).__name__}: {_one_line(str(exc))[:300]} "
            "(a bug: rerun with -v for the traceback and report it)\n"
        )
        return EXIT_INTERNAL
    sys.stderr.write(f"jolalens: error: {message}\n")
    return EXIT_ERROR
