"""The exceptions jolalens raises: each names the problem and the fix."""

from __future__ import annotations

__all__ = [
    "JolaError",
    "ModelError",
    "DataError",
    "EditLoadError",
    "TrainingError",
]


class JolaError(Exception):
    """Base class of every jolalens error."""


class ModelError(JolaError, ValueError):
    """A model cannot be loaded, or lacks what jolalens needs (e.g. ``hook_z``)."""


class DataError(JolaError, ValueError):
    """A data file or record is malformed; the message names the file and line."""


class EditLoadError(JolaError, ValueError):
    """A saved edit cannot be loaded (missing files, other model, other method)."""


class TrainingError(JolaError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""
