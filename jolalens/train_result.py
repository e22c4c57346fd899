"""What training returns (:class:`TrainResult`) and the run directory it saves."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from .atomic_dir import atomic_dir
from .edit import Edit

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """The trained edit (best epoch restored) and what happened on the way."""

    edit: Edit
    history: pd.DataFrame
    gate_history: list[dict[str, Tensor]] = field(repr=False)
    best_epoch: int
    stopped_early: bool
    seconds: float

    def save(self, run_dir: str | Path, *, overwrite: bool = False) -> Path:
        """A run directory: ``edit/`` (the saved edit), ``history.csv``, ``gate_history.pt``,
        ``head_maps.pt`` (the final ``[layer, head]`` maps), ``summary.json`` and the completion
        marker, written aside and renamed into place only when all are written."""
        run_dir = Path(run_dir)
        summary = self.summary()  # before any file is written: a broken result fails here
        # complete or absent; an old run is replaced only at the end
        with atomic_dir(run_dir, overwrite=overwrite) as tmp:
            self.edit.save(tmp / "edit")
            self.history.to_csv(tmp / "history.csv", index=False)
            if self.gate_history:
                torch.save(self.gate_history, tmp / "gate_history.pt")
            for name, artifact in self.edit.run_artifacts().items():
                torch.save(artifact, tmp / name)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return run_dir

    def summary(self) -> dict[str, Any]:
        """Best epoch, its validation CE, time taken, and the edit's extras (JoLA: closed gates)."""
        best = self.history.loc[self.history["epoch"] == self.best_epoch].iloc[0]
        out: dict[str, Any] = {
            "method": self.edit.method,
            "best_epoch": self.best_epoch,
            "epochs_run": int(self.history["epoch"].max()),
            "stopped_early": self.stopped_early,
            "val_ce_first_epoch": float(self.history["val_ce"].iloc[0]),
            "val_ce_best": float(best["val_ce"]),
            "trainable_parameters": self.edit.n_trainable(),
            "seconds": round(self.seconds, 2),
        }
        out.update(self.edit.summary_extras())
        return out
