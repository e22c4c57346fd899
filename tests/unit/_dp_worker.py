"""Trains JoLA and BitFit on the tiny model, in one process or as one rank of ``accelerate launch``.

``python -m accelerate.commands.launch --cpu --num_processes 2 tests/unit/_dp_worker.py OUT.pt``
saves rank 0's trained edits to OUT.pt; the test compares them with :func:`train_all` in one
process.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from jolalens.baselines import BitFitConfig, BitFitEdit
from jolalens.data import Example
from jolalens.distributed import DataParallel, data_parallel
from jolalens.testing import tiny_model
from jolalens.train import TrainConfig, train_edit, train_jola

# 9 training rows in global batches of 4: the last batch (1 row) leaves rank 1 an empty shard
CONFIG = TrainConfig(
    epochs=2,
    batch_size=4,
    eval_batch_size=3,
    warmup_steps=1,
    lr=2e-2,
    seed=3,
    max_length=64,
    progress=False,
)


def _examples(n: int, offset: int) -> list[Example]:
    return [
        Example(f"pick {c} {i + offset}", c, choices=("a", "b", "c")) for i, c in zip(range(n), "abc" * n, strict=False)
    ]


def train_all(dp: DataParallel | None) -> dict[str, Any]:
    """The trained edits' states and validation curves: one process (``dp=None``) or several."""
    model = tiny_model(seed=0)
    train, valid = _examples(9, 0), _examples(7, 100)
    out: dict[str, Any] = {}
    with data_parallel(dp):
        jola = train_jola(model, train, valid, config=CONFIG)
        bitfit = train_edit(model, BitFitEdit.for_model(model, BitFitConfig()), train, valid, config=CONFIG)
    for name, result in (("jola", jola), ("bitfit", bitfit)):
        out[name] = {
            "state": {k: v.detach().clone() for k, v in result.edit.state_dict().items()},
            "val_ce": result.history["val_ce"].tolist(),
            "train_ce": result.history["train_ce"].tolist(),
        }
    return out


if __name__ == "__main__":
    group = DataParallel.from_accelerate(timeout_s=60)
    results = train_all(group)
    if group.is_main:
        torch.save(results, sys.argv[1])
