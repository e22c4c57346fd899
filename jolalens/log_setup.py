"""Logging for the command line: the library logs to module loggers under ``jolalens``; the CLI
(``jolalens -q`` / ``-v`` / ``-vv``) decides what reaches the terminal."""

from __future__ import annotations

import logging

__all__ = ["LOGGER_NAME", "configure_logging", "verbosity_level"]

LOGGER_NAME = "jolalens"
_HANDLER_FLAG = "_jolalens_cli_handler"


def verbosity_level(verbosity: int) -> int:
    """``-1`` (``-q``): warnings only; ``0``: info; ``>= 1`` (``-v``): debug."""
    if verbosity < 0:
        return logging.WARNING
    return logging.INFO if verbosity == 0 else logging.DEBUG


def configure_logging(verbosity: int = 0) -> logging.Logger:
    """Send the ``jolalens`` loggers to stderr at the level of ``verbosity``; idempotent."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(verbosity_level(verbosity))
    if not any(getattr(h, _HANDLER_FLAG, False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        setattr(handler, _HANDLER_FLAG, True)
        logger.addHandler(handler)
    return logger
