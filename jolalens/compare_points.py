"""The finished search points of an unfinished ``jolalens compare`` run.

A run tries ``budget`` hyper-parameter points one after another. Each finished point is kept in
``RUN/points/point{i}/`` (its edit, then ``point.json`` last, which marks it complete), so that a
run stopped between points resumes at the next one instead of refitting them all. The runner
deletes ``points/`` once the run's ``result.json`` is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .edit import load_edit
from .errors import JolaError
from .fileio import atomic_path
from .methods import Fitted
from .run_records import read_record

__all__ = ["POINTS_DIR", "POINT_FILE", "load_point", "save_point", "write_json_atomic"]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")


POINTS_DIR = "points"  # in a run directory, until the run is done
POINT_FILE = "point.json"


def save_point(point_dir: Path, hp: dict[str, Any], fitted: Fitted, seconds: float, device: str) -> None:
    """Keep one finished search point; ``point.json`` is written last and marks it complete."""
    fitted.edit.save(point_dir / "edit", overwrite=True)
    write_json_atomic(
        point_dir / POINT_FILE,
        {
            "hyperparameters": hp,
            "val_ce": fitted.val_ce,
            "trainable_parameters": fitted.trainable_parameters,
            "info": fitted.info,
            "seconds": seconds,
            "device": device,
        },
    )


def load_point(
    model: nn.Module, point_dir: Path, hp: dict[str, Any], log: Callable[[str], None] | None = None
) -> tuple[Fitted, float, str] | None:
    """A search point an interrupted attempt of this run finished (with its fit seconds and the
    device it was fitted on), or ``None`` if there is none for ``hp``; a damaged one is reported
    and refitted."""
    keys = ("hyperparameters", "val_ce", "trainable_parameters", "info", "seconds")
    saved = read_record(point_dir / POINT_FILE, keys, log)
    if saved is None or saved["hyperparameters"] != json.loads(json.dumps(hp)):
        return None
    try:
        edit = load_edit(point_dir / "edit", model)
        n_trainable = int(saved["trainable_parameters"])
        fitted = Fitted(edit, float(saved["val_ce"]), n_trainable, saved["info"])
        seconds = float(saved["seconds"])
    except (JolaError, OSError, TypeError, ValueError) as exc:  # e.g. weights not committed: refit
        if log is not None:
            log(f"  damaged kept point {point_dir}: {exc}; refitting it")
        return None
    if not math.isfinite(fitted.val_ce):
        return None
    return fitted, seconds, str(saved.get("device", "unrecorded"))
