"""Answer-only cross-entropy: the loss every method trains on, and the validation number
(:func:`validation_ce`) that every method's early stopping and hyper-parameter choice use.

Only the positions that predict answer tokens (``labels != -100``) are scored; on the HF view
the unembedding runs only there (:meth:`jolalens.runners.ModelRunner.logits_where`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Batch, Example, answer_mask, collate, model_tokenizer, padding_id, tokenize_example
from .distributed import DataParallel
from .edit import Edit, answer_positions
from .errors import DataError
from .runners import ModelRunner, runner_for
from .train_config import TrainConfig

__all__ = [
    "answer_cross_entropy",
    "answer_logits",
    "make_batches",
    "mean_answer_ce",
    "tokenize_rows",
    "validation_ce",
]

Row = tuple[list[int], list[int]]  # token ids, labels (-100 off the answer)


def answer_cross_entropy(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """Token-mean cross-entropy of the next-token predictions on answer positions (labels != -100)."""
    targets = labels[:, 1:]
    mask = targets != -100
    n = int(mask.sum())
    if n == 0:
        raise DataError("a batch holds no answer tokens to supervise")
    picked = logits[:, :-1][mask]
    return F.cross_entropy(picked.float(), targets[mask]), n


def answer_logits(runner: ModelRunner, batch: Batch) -> tuple[Tensor, Tensor]:
    """Logits and targets at the positions that predict answer tokens only.

    On the HF view the unembedding runs only where a loss is taken, which for a short answer
    after a long prompt saves most of its cost; the maths is unchanged.
    """
    targets = batch.labels[:, 1:]
    mask = targets != -100
    if not bool(mask.any()):
        raise DataError("a batch holds no answer tokens to supervise")
    where = answer_mask(batch.labels)
    with answer_positions(where):
        picked = runner.logits_where(batch.input_ids, batch.attention_mask, batch.position_ids, where)
    return picked, targets[mask]


def tokenize_rows(tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig, what: str) -> list[Row]:
    """``examples`` tokenized as ``cfg`` trains them (prompt style, ``max_length``, ``answer_eos``)."""
    if not examples:
        raise DataError(f"the {what} set is empty")
    eos_id = None
    if cfg.answer_eos:
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            raise DataError("answer_eos=True needs a tokenizer with an end-of-sequence token; this one has none")
    return [
        tokenize_example(tokenizer, ex, style=cfg.prompt_style, max_length=cfg.max_length, eos_id=eos_id)
        for ex in examples
    ]


def make_batches(rows: Sequence[Row], size: int, pad_id: int, side: str, order: Sequence[int]) -> list[Batch]:
    """``rows`` in ``order``, ``size`` to a batch, padded on ``side`` by :func:`jolalens.data.collate`."""
    return [collate([rows[j] for j in order[i : i + size]], pad_id, side) for i in range(0, len(order), size)]


def length_sorted(rows: Sequence[Row]) -> list[int]:
    """Row indices, shortest first: batches of similar lengths carry little padding.

    For sums over all rows (validation CE), where the order of the rows does not matter.
    """
    return sorted(range(len(rows)), key=lambda j: len(rows[j][0]))


def epoch_batches(
    n_rows: int, lengths: Sequence[int], batch_size: int, length_grouping: int, generator: torch.Generator
) -> list[list[int]]:
    """One epoch's batches of row indices: a random order, cut into ``batch_size`` pieces.

    With ``length_grouping = k > 1`` each run of ``k`` consecutive batches of that order is
    re-cut by length (so a batch holds rows of similar lengths: less padding) and the ``k``
    batches are shuffled, as ``group_by_length`` samplers do; ``k = 1`` is the plain order.
    """
    order = torch.randperm(n_rows, generator=generator).tolist()
    if length_grouping <= 1:
        return [order[i : i + batch_size] for i in range(0, n_rows, batch_size)]
    batches: list[list[int]] = []
    span = batch_size * length_grouping
    for start in range(0, n_rows, span):
        chunk = sorted(order[start : start + span], key=lambda j: lengths[j])
        pieces = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        batches.extend(pieces[k] for k in torch.randperm(len(pieces), generator=generator).tolist())
    return batches


@torch.no_grad()
def mean_answer_ce(
    runner: ModelRunner,
    edit: nn.Module | None,
    batches: list[Batch],
    device: torch.device,
    t: int | None,
    dp: DataParallel | None = None,
) -> tuple[float, int | None]:
    """Validation answer CE (token mean, deterministic gates); ``t`` advanced per batch if given.

    With ``dp`` each rank scores every ``world_size``-th batch and the sums are all-reduced.
    """
    if edit is not None:
        edit.eval()
    total, count = 0.0, 0
    for batch in batches if dp is None else batches[dp.rank :: dp.world_size]:
        picked, targets = answer_logits(runner, batch.to(device))
        total += F.cross_entropy(picked.float(), targets, reduction="sum").item()
        count += targets.numel()
    if dp is not None:
        total, count = dp.all_reduce_sum(
            torch.tensor([total, float(count)], dtype=torch.float64, device=dp.device)
        ).tolist()
    return total / count, (t + len(batches) if t is not None else None)


def validation_ce(
    model: nn.Module,
    edit: Edit | None,
    examples: Sequence[Example],
    *,
    config: TrainConfig | None = None,
) -> float:
    """Answer-token cross-entropy of ``examples`` with ``edit`` attached (``None``: the base model).

    The same number every method's early stopping and hyper-parameter choice use.
    """
    cfg = config or TrainConfig()
    tokenizer = model_tokenizer(model)
    rows = tokenize_rows(tokenizer, examples, cfg, "validation")
    batches = make_batches(rows, cfg.eval_batch_size, padding_id(tokenizer), cfg.padding_side, length_sorted(rows))
    device = next(model.parameters()).device
    runner = runner_for(model, cfg.backend)
    if edit is None:
        return mean_answer_ce(runner, None, batches, device, None)[0]
    with runner.attached(edit):
        was_training = edit.training
        try:
            return mean_answer_ce(runner, edit, batches, device, None)[0]
        finally:
            edit.train(was_training)
