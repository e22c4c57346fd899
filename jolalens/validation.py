"""Small checks shared by the library and the CLI: finite tensors, option values, layer lists.

The same rule runs for the Python API (config ``__post_init__``) and the command line (which
builds those configs), so a bad value gets one message wherever it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

__all__ = [
    "MAX_LR",
    "check_lr",
    "check_positive_int",
    "nonfinite_tensors",
    "parse_layers",
]

# every recipe here uses 1e-4 .. 5e-2; above 1, AdamW only saturates gates and blows up vectors
MAX_LR = 1.0


def nonfinite_tensors(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    return [name for name, t in items if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_lr(lr: float, name: str = "lr") -> None:
    """A finite learning rate in (0, MAX_LR]; ``ValueError`` naming the fix otherwise."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or not 0 < lr <= MAX_LR:
        raise ValueError(f"{name} must be a finite number in (0, {MAX_LR:g}], got {lr!r}; the paper's recipe uses 5e-3")


def check_positive_int(value: object, name: str) -> None:
    """``ValueError`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"0,3,5"`` -> ``(0, 3, 5)``; ``None`` (option not given) -> all layers.

    An empty or blank string is refused rather than read as "all layers", and so are
    non-integers, negatives and repeats.
    """
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ValueError(
            f"--layers {text!r} is empty or has an empty item; give comma-separated layer "
            "indices like 0,3,5, "
            "or leave --layers out for all layers"
        )
    try:
        layers = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--layers {text!r}: every item must be an integer layer index, like 0,3,5") from None
    if any(layer < 0 for layer in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"--layers {text!r}: layer indices must be >= 0 and not repeated")
    return layers
