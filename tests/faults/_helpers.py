"""Shared helpers of the fault-injection suite: byte snapshots, a fast tiny training run."""

from __future__ import annotations

from pathlib import Path

from jolalens import Example, TrainConfig, train_jola

FAST = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, progress=False, lr=5e-2, max_length=64)


def snapshot(root: str | Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes): what "byte-identical" compares."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def data(n: int = 8) -> list[Example]:
    letters = "abcdefgh"
    return [Example(f"repeat {letters[i % 8]}", letters[i % 8] * 3) for i in range(n)]


def train_tiny(model, config: TrainConfig = FAST):
    return train_jola(model, data(8), data(4), config=config)


def leftovers(parent: str | Path) -> list[str]:
    """Temporary siblings left next to an output (none may survive a failed write)."""
    return sorted(p.name for p in Path(parent).iterdir() if ".tmp-" in p.name or ".old-" in p.name)
