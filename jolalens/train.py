"""Training an edit: answer-only cross-entropy plus the edit's own penalty.

The base model is frozen for the whole run (its ``requires_grad`` flags are restored after),
only the edit's parameters reach the optimizer, and by default the forward pass runs on
``hf_view(model)`` with SDPA attention (``Backend.HF_VIEW``) where the model has one, and on
TransformerLens hook points otherwise (:func:`jolalens.runners.runner_for`).
Everything method-specific (JoLA's expected-L0 penalty, its faster gates, its gate report)
comes from the edit's training hooks (:class:`jolalens.edit.Edit`), never from a type check.

This module is the loop; the loss and the validation number are :mod:`jolalens.answer_loss`, the
recipe :mod:`jolalens.train_config` and the returned run :mod:`jolalens.train_result` (their public
names stay importable from here).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .answer_loss import (
    answer_cross_entropy,
    answer_logits,
    epoch_batches,
    length_sorted,
    make_batches,
    mean_answer_ce,
    tokenize_rows,
    validation_ce,
)
from .checkpointing import checkpointed_layers
from .data import Example, collate, model_tokenizer, padding_id
from .distributed import DataParallel, current_data_parallel
from .edit import Edit
from .errors import TrainingError
from .jola import JolaConfig, JolaEdit
from .jola_training import PenaltyMode, SparsityConfig, sparsity_penalty
from .runners import ModelRunner, runner_for
from .train_config import SelectionMetric, TrainConfig
from .train_result import TrainResult
from .validation import nonfinite_tensors

logger = logging.getLogger(__name__)

__all__ = [
    "PenaltyMode",
    "SelectionMetric",
    "SparsityConfig",
    "TrainConfig",
    "TrainResult",
    "answer_cross_entropy",
    "freeze",
    "sparsity_penalty",
    "train_edit",
    "train_jola",
    "validation_ce",
]


@contextmanager
def freeze(model: nn.Module) -> Iterator[None]:
    """Every parameter of ``model`` frozen inside the block; the original flags come back after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _attached_runner(model: nn.Module, edit: Edit, cfg: TrainConfig) -> Iterator[ModelRunner]:
    """The model's runner with ``edit`` on (built inside ``freeze``: the HF view shares flags)."""
    runner = runner_for(model, cfg.backend)
    layers = runner.layers() if cfg.checkpoint_activations else []  # asked only when needed
    with runner.attached(edit), checkpointed_layers(layers, enabled=cfg.checkpoint_activations):
        yield runner


def _lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_jola(
    model: nn.Module,
    train: Sequence[Example],
    valid: Sequence[Example],
    *,
    jola: JolaConfig | None = None,
    config: TrainConfig | None = None,
    sparsity: SparsityConfig | None = None,
) -> TrainResult:
    """Learn a JoLA edit for ``model`` on ``train``, early-stopping on ``valid``.

    A thin wrapper: ``train_edit(model, JolaEdit.for_model(model, jola, sparsity), ...)``
    (the edit carries its penalty and gate learning rate). ``jola`` defaults to
    ``JolaConfig(seed=config.seed)``. A non-finite loss stops training with :class:`TrainingError`.
    """
    cfg = config or TrainConfig()
    edit = JolaEdit.for_model(model, jola or JolaConfig(seed=cfg.seed), sparsity)
    return train_edit(model, edit, train, valid, config=cfg, desc="JoLA")


def train_edit(
    model: nn.Module,
    edit: Edit,
    train: Sequence[Example],
    valid: Sequence[Example],
    *,
    config: TrainConfig | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    regularizer: Callable[[int], tuple[Tensor, float]] | None = None,
    count_eval_steps: bool | None = None,
    desc: str | None = None,
) -> TrainResult:
    """Train any edit's parameters on answer-only cross-entropy (+ its regulariser).

    The one loop every trainable method shares: frozen base model, AdamW on
    ``edit.param_groups(config.lr, config)``, warm-up then cosine decay, gradient clipping,
    validation CE each epoch, early stopping with ``patience``, and the best epoch's state
    restored. ``regularizer(t)`` defaults to ``edit.penalty``; ``t`` counts optimiser steps (and
    validation batches when ``count_eval_steps``, default ``edit.penalty_counts_eval_steps``, as
    the released JoLA code's schedule does). After each epoch the history row gains
    ``edit.epoch_metrics()`` and ``gate_history`` gains ``edit.epoch_maps()`` (if not empty).
    ``param_groups``, ``regularizer`` and ``count_eval_steps`` override the edit's own.
    """
    cfg = config or TrainConfig()
    seed_everything(cfg.seed)
    tokenizer = model_tokenizer(model)
    pad_id = padding_id(tokenizer)
    train_rows = tokenize_rows(tokenizer, train, cfg, "training")
    valid_rows = tokenize_rows(tokenizer, valid, cfg, "validation")
    device = next(model.parameters()).device
    edit.to(device)
    groups = param_groups if param_groups is not None else edit.param_groups(cfg.lr, cfg)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise TrainingError(f"the {edit.method} edit has no trainable parameters to train")
    regularizer = regularizer or edit.penalty
    if count_eval_steps is None:
        count_eval_steps = edit.penalty_counts_eval_steps
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.warmup_steps, total_steps))
    valid_batches = make_batches(valid_rows, cfg.eval_batch_size, pad_id, cfg.padding_side, length_sorted(valid_rows))
    train_lengths = [len(ids) for ids, _ in train_rows]
    order_gen = torch.Generator().manual_seed(cfg.seed)
    trainable = [p for g in groups for p in g["params"]]
    dp = current_data_parallel()  # set by jolalens.distributed.data_parallel: shard every global batch
    if dp is not None:
        dp.broadcast_parameters(trainable)

    history: list[dict[str, Any]] = []
    gate_history: list[dict[str, Tensor]] = []
    best = (math.inf, -1, copy.deepcopy(edit.state_dict()))
    bad_epochs, t, step, stopped_early = 0, 0, 0, False
    start = time.perf_counter()
    initial = edit.epoch_maps()  # epoch 0: gate dynamics start where training started
    if initial:
        gate_history.append({**initial, "epoch": torch.tensor(0)})
    bar = tqdm(
        total=total_steps,
        desc=desc or edit.method,
        unit="step",
        disable=not cfg.progress or (dp is not None and not dp.is_main),
    )
    with freeze(model), _attached_runner(model, edit, cfg) as runner:
        for epoch in range(1, cfg.epochs + 1):
            edit.train()
            batches = epoch_batches(len(train_rows), train_lengths, cfg.batch_size, cfg.length_grouping, order_gen)
            ce_sum = pen_sum = 0.0
            n_batches = 0
            lam = 0.0
            for indices in batches:
                global_rows = [train_rows[j] for j in indices]
                with edit.noise_held():  # one noise sample per step, also for recomputed layers
                    if dp is None:
                        batch = collate(global_rows, pad_id, cfg.padding_side).to(device)
                        picked, targets = answer_logits(runner, batch)
                        ce = F.cross_entropy(picked.float(), targets)
                        penalty, lam = regularizer(t)
                        loss = ce + penalty
                    else:
                        ce, penalty, lam = _data_parallel_backward(
                            dp, runner, global_rows, pad_id, cfg, device, trainable, optimizer, regularizer, t, step + 1
                        )
                        loss = ce + penalty.detach()
                    if not torch.isfinite(loss):
                        bar.close()
                        raise TrainingError(
                            f"non-finite loss at epoch {epoch}, step {step + 1} (ce={ce.item()}, "
                            f"penalty={float(penalty.detach())}); lower the learning rate, use float32 or "
                            "bfloat16 instead of float16, and check the data for empty answers"
                        )
                    if dp is None:
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                t += 1
                step += 1
                ce_sum += ce.item()
                pen_sum += float(penalty.detach())
                n_batches += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, ce=f"{ce.item():.3f}")
            val_ce, t_after = mean_answer_ce(runner, edit, valid_batches, device, t if count_eval_steps else None, dp)
            t = t_after if t_after is not None else t
            val_pen, _ = regularizer(t)
            row = {
                "epoch": epoch,
                "step": step,
                "train_ce": ce_sum / n_batches,
                "train_penalty": pen_sum / n_batches,
                "val_ce": val_ce,
                "val_loss": val_ce + float(val_pen.detach()),
                "lam": lam,
                "lr": scheduler.get_last_lr()[0],
            }
            row.update(edit.epoch_metrics())
            maps = edit.epoch_maps()
            if maps:
                gate_history.append({**maps, "epoch": torch.tensor(epoch)})
            history.append(row)
            logger.info(
                "%s epoch %d/%d: train CE %.4f, penalty %.4f, validation CE %.4f",
                desc or edit.method,
                epoch,
                cfg.epochs,
                row["train_ce"],
                row["train_penalty"],
                val_ce,
            )
            bar.set_postfix(epoch=epoch, val_ce=f"{val_ce:.3f}")
            metric = float(row[cfg.selection.value])
            if metric < best[0]:
                best = (metric, epoch, copy.deepcopy(edit.state_dict()))
                bad_epochs = 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    stopped_early = epoch < cfg.epochs
                    logger.info(
                        "%s: no better %s for %d epochs; stopping", desc or edit.method, cfg.selection.value, bad_epochs
                    )
                    break
    bar.close()
    if best[1] < 1:
        raise TrainingError(
            f"the validation {cfg.selection.value} was never finite in "
            f"{len(history)} epoch(s); nothing was saved: lower the learning rate "
            "and check the data"
        )
    name = desc or edit.method
    logger.info("%s: best epoch %d (%s %.4f) restored", name, best[1], cfg.selection.value, best[0])
    edit.load_state_dict(best[2])
    edit.eval()
    bad = nonfinite_tensors(edit.state_dict())
    if bad:
        raise TrainingError(
            f"training left NaN/inf in the {edit.method} edit ({bad[:5]}); nothing was saved: lower the learning rate"
        )
    return TrainResult(
        edit=edit,
        history=pd.DataFrame(history),
        gate_history=gate_history,
        best_epoch=best[1],
        stopped_early=stopped_early,
        seconds=time.perf_counter() - start,
    )


def _data_parallel_backward(
    dp: DataParallel,
    runner: ModelRunner,
    global_rows: list[tuple[list[int], list[int]]],
    pad_id: int,
    cfg: TrainConfig,
    device: torch.device,
    trainable: list[Tensor],
    optimizer: torch.optim.Optimizer,
    regularizer: Callable[[int], tuple[Tensor, float]],
    t: int,
    step: int,
) -> tuple[Tensor, Tensor, float]:
    """One data-parallel step's gradients (this rank's shard, all-reduced, plus the regulariser's).

    Returns the global batch's token-mean CE, the penalty and its lambda, as the one-process step has them.
    """
    optimizer.zero_grad(set_to_none=True)
    rows, weight = dp.shard_for_step(global_rows)

    def shard_ce_sum() -> tuple[Tensor, int]:
        picked, targets = answer_logits(runner, collate(rows, pad_id, cfg.padding_side).to(device))
        return F.cross_entropy(picked.float(), targets, reduction="sum") * weight, targets.numel() if weight else 0

    ce, _ = dp.backward_step(step, shard_ce_sum, trainable)
    penalty, lam = regularizer(t)
    if penalty.requires_grad:  # the same on every rank: added once, after the reduction
        penalty.backward()
    return ce, penalty, lam
