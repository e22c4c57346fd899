"""Training an edit: answer-only cross-entropy plus the edit's own penalty.

The base model is frozen for the whole run (its ``requires_grad`` flags are restored after),
only the edit's parameters reach the optimizer, and by default the forward pass runs on
``hf_view(model)`` with SDPA attention (``Backend.HF_VIEW``) where the model has one, and on
TransformerLens hook points otherwise (:func:`jolalens.runners.runner_for`).
Everything method-specific (JoLA's expected-L0 penalty, its faster gates, its gate report)
comes from the edit's training hooks (:class:`jolalens.edit.Edit`), never from a type check.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .atomic_dir import atomic_dir
from .data import Batch, Example, PromptStyle, answer_mask, collate, tokenize_example
from .distributed import DataParallel, current_data_parallel
from .edit import Backend, Edit, answer_positions
from .errors import DataError, TrainingError
from .jola import JolaConfig, JolaEdit
from .jola_training import DEFAULT_GATE_LR_SCALE, PenaltyMode, SparsityConfig, sparsity_penalty
from .runners import ModelRunner, runner_for
from .validation import check_lr, check_positive_int, nonfinite_tensors

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


class SelectionMetric(StrEnum):
    """What early stopping and best-epoch selection watch on the validation set."""

    VAL_CE = "val_ce"  # answer cross-entropy only (default: the penalty's lam does not leak in)
    VAL_LOSS = "val_loss"  # cross-entropy + penalty, as the released code's eval_loss


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe; defaults are the paper's (AdamW 5e-3, cosine, 50 warm-up steps)."""

    lr: float = 5e-3
    gate_lr_scale: float = DEFAULT_GATE_LR_SCALE
    epochs: int = 20
    batch_size: int = 8
    eval_batch_size: int = 8
    warmup_steps: int = 50
    patience: int = 2
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 42
    max_length: int = 400
    padding_side: str = "right"
    prompt_style: PromptStyle = PromptStyle.ALPACA
    backend: Backend | None = None  # None: the HF view where it exists, hook points otherwise
    selection: SelectionMetric = SelectionMetric.VAL_CE
    progress: bool = True
    # Train the end-of-sequence token after each answer, so that generation stops after it.
    # Off by default: the paper (and its released code, B6) trains the answer alone.
    answer_eos: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_style", PromptStyle(self.prompt_style))
        if self.backend is not None and self.backend != "auto":
            object.__setattr__(self, "backend", Backend(self.backend))
        else:
            object.__setattr__(self, "backend", None)
        object.__setattr__(self, "selection", SelectionMetric(self.selection))
        if self.gate_lr_scale <= 0:
            raise ValueError(f"gate_lr_scale must be > 0, got {self.gate_lr_scale}")
        check_lr(self.lr)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_positive_int(getattr(self, name), name)
        if self.warmup_steps < 0 or self.patience < 1 or self.max_length < 2:
            raise ValueError("warmup_steps >= 0, patience >= 1 and max_length >= 2 are required")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")


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
        import json

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


def answer_cross_entropy(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """Token-mean cross-entropy of the next-token predictions on answer positions (labels != -100)."""
    targets = labels[:, 1:]
    mask = targets != -100
    n = int(mask.sum())
    if n == 0:
        raise DataError("a batch holds no answer tokens to supervise")
    picked = logits[:, :-1][mask]
    return F.cross_entropy(picked.float(), targets[mask]), n


def _logits_at_answers(runner: ModelRunner, batch: Batch) -> tuple[Tensor, Tensor]:
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


@contextmanager
def _attached_runner(model: nn.Module, edit: Edit, cfg: TrainConfig) -> Iterator[ModelRunner]:
    """The model's runner with ``edit`` on (built inside ``freeze``: the HF view shares flags)."""
    with runner_for(model, cfg.backend).attached(edit) as runner:
        yield runner


def _batches(
    rows: Sequence[tuple[list[int], list[int]]], size: int, pad_id: int, side: str, order: Sequence[int]
) -> list[Batch]:
    return [collate([rows[j] for j in order[i : i + size]], pad_id, side) for i in range(0, len(order), size)]


def _tokenize_all(
    tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig, what: str
) -> list[tuple[list[int], list[int]]]:
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
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise DataError("the model has no tokenizer; load it with jolalens.load_model")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_rows = _tokenize_all(tokenizer, train, cfg, "training")
    valid_rows = _tokenize_all(tokenizer, valid, cfg, "validation")
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
    valid_batches = _batches(valid_rows, cfg.eval_batch_size, pad_id, cfg.padding_side, range(len(valid_rows)))
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
            order = torch.randperm(len(train_rows), generator=order_gen).tolist()
            ce_sum = pen_sum = 0.0
            n_batches = 0
            lam = 0.0
            for i in range(0, len(order), cfg.batch_size):
                global_rows = [train_rows[j] for j in order[i : i + cfg.batch_size]]
                if dp is None:
                    batch = collate(global_rows, pad_id, cfg.padding_side).to(device)
                    picked, targets = _logits_at_answers(runner, batch)
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
            val_ce, t_after = _validate(runner, edit, valid_batches, device, t if count_eval_steps else None, dp)
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
        picked, targets = _logits_at_answers(runner, collate(rows, pad_id, cfg.padding_side).to(device))
        return F.cross_entropy(picked.float(), targets, reduction="sum") * weight, targets.numel() if weight else 0

    ce, _ = dp.backward_step(step, shard_ce_sum, trainable)
    penalty, lam = regularizer(t)
    if penalty.requires_grad:  # the same on every rank: added once, after the reduction
        penalty.backward()
    return ce, penalty, lam


@torch.no_grad()
def _validate(
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
        picked, targets = _logits_at_answers(runner, batch.to(device))
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
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise DataError("the model has no tokenizer; load it with jolalens.load_model")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = _tokenize_all(tokenizer, examples, cfg, "validation")
    batches = _batches(rows, cfg.eval_batch_size, pad_id, cfg.padding_side, range(len(rows)))
    device = next(model.parameters()).device
    runner = runner_for(model, cfg.backend)
    if edit is None:
        return _validate(runner, None, batches, device, None)[0]
    with runner.attached(edit):
        was_training = edit.training
        try:
            return _validate(runner, edit, batches, device, None)[0]
        finally:
            edit.train(was_training)
