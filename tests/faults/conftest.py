"""Fault-suite fixtures: the CLI runs in-process here, so undo its logging set-up after each test."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_jolalens_logger():
    logger = logging.getLogger("jolalens")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
