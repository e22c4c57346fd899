"""The CLI's -q/-v flags set what the jolalens loggers let through."""

import logging

import pytest

from jolalens.cli import build_parser
from jolalens.log_setup import LOGGER_NAME, configure_logging, verbosity_level


def test_verbosity_levels():
    assert verbosity_level(-1) == logging.WARNING
    assert verbosity_level(0) == logging.INFO
    assert verbosity_level(2) == logging.DEBUG


def test_configure_logging_is_idempotent():
    logger = logging.getLogger(LOGGER_NAME)
    saved, level = logger.handlers[:], logger.level  # an earlier CLI test in this process may have configured it
    logger.handlers.clear()
    try:
        configure_logging(0)
        configure_logging(1)
        assert len(logger.handlers) == 1 and logger.level == logging.DEBUG
    finally:
        logger.handlers[:] = saved
        logger.setLevel(level)


def test_cli_parses_quiet_and_verbose_before_the_command():
    parser = build_parser()
    assert parser.parse_args(["-q", "tasks"]).quiet
    assert parser.parse_args(["-vv", "tasks"]).verbose == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["-q", "-v", "tasks"])
