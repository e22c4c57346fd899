"""Per-head scores (ablation or attribution), saved to disk and cached under a content key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..errors import DataError
from ..fileio import atomic_path
from ..models import model_identity
from .scoring_data import ScoringData

__all__ = ["CACHE_VERSION", "HeadScores", "model_fingerprint", "scores_cache_path"]

CACHE_VERSION = 1


@dataclass
class HeadScores:
    """Per-head drops in the task metric: ``clean - ablated``, averaged over examples.

    ``accuracy_drop`` and ``clean_accuracy`` are ``None`` when no example has choices, for
    ``ablation_scores(..., accuracy=False)`` (gold rows only), and always for attribution, whose
    first-order estimate exists only for the differentiable log-prob.
    """

    logprob_drop: Float[Tensor, "n_layers n_heads"]
    accuracy_drop: Float[Tensor, "n_layers n_heads"] | None
    clean_logprob: float
    clean_accuracy: float | None
    method: str  # "ablation" or "attribution"
    ablation: str
    n_examples: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.logprob_drop.shape)  # type: ignore[return-value]

    def to_frame(self) -> pd.DataFrame:
        """One row per head: layer, head, label, logprob_drop, accuracy_drop, rank (1 = top)."""
        n_layers, n_heads = self.shape
        layer, head = torch.meshgrid(torch.arange(n_layers), torch.arange(n_heads), indexing="ij")
        frame = pd.DataFrame(
            {
                "layer": layer.flatten().numpy(),
                "head": head.flatten().numpy(),
                "label": [
                    f"L{lay}H{hd}" for lay, hd in zip(layer.flatten().tolist(), head.flatten().tolist(), strict=True)
                ],
                "logprob_drop": self.logprob_drop.flatten().numpy(),
                "accuracy_drop": (
                    self.accuracy_drop.flatten().numpy() if self.accuracy_drop is not None else float("nan")
                ),
            }
        )
        frame["rank"] = frame["logprob_drop"].rank(ascending=False, method="first").astype(int)
        frame["method"] = self.method
        frame["ablation"] = self.ablation
        return frame

    def to_dict(self) -> dict[str, Any]:
        return {
            "logprob_drop": self.logprob_drop.detach().cpu(),
            "accuracy_drop": None if self.accuracy_drop is None else self.accuracy_drop.detach().cpu(),
            "clean_logprob": self.clean_logprob,
            "clean_accuracy": self.clean_accuracy,
            "method": self.method,
            "ablation": self.ablation,
            "n_examples": self.n_examples,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadScores:
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Save to one ``.pt`` file (tensors and numbers; loads with ``weights_only=True``)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save({"version": CACHE_VERSION, **self.to_dict()}, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> HeadScores:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no saved head scores there")
        data = torch.load(path, weights_only=True)
        if data.pop("version", None) != CACHE_VERSION:
            raise DataError(f"{path}: head scores in another format version; recompute them")
        return cls.from_dict(data)


def model_fingerprint(model: nn.Module) -> str:
    """Model identity plus a checksum of every weight, so edited weights change the cache key."""
    h = hashlib.sha256(json.dumps(model_identity(model), sort_keys=True).encode())
    with torch.no_grad():
        sums = [
            torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
            for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0])
        ]
    if sums:
        h.update(torch.stack(sums).cpu().numpy().round(6).tobytes())
    return h.hexdigest()


def _cache_path(cache_dir: str | Path | None, key: dict[str, Any]) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{key['method']}-{key['ablation']}-{digest}.pt"


def scores_cache_path(
    cache_dir: str | Path | None,
    method: str,
    ablation: str,
    model: nn.Module,
    scored: ScoringData,
    ref: ScoringData,
    seed: int,
    *,
    logprob_only: bool = False,
) -> Path | None:
    """Where scores for these inputs are cached (None without a cache directory).

    ``logprob_only`` (scores without the accuracy metric) gets a key of its own; the keys of
    full results are those of earlier versions.
    """
    if cache_dir is None:
        return None
    key = {
        "version": CACHE_VERSION,
        "method": method,
        "ablation": ablation,
        "positions": "all",
        "model": model_fingerprint(model),
        "data": scored.fingerprint(),
        "reference": ref.fingerprint() if ablation != "zero" else None,
        "seed": seed if ablation == "resample" else None,
    }
    if logprob_only:
        key["metrics"] = "logprob"
    return _cache_path(cache_dir, key)
