"""Training a JoLA edit: answer-only cross-entropy plus an expected-L0 penalty on the gates.

The base model is frozen for the whole run (its ``requires_grad`` flags are restored after),
only the edit's parameters reach the optimizer, and by default the forward pass runs on
``hf_view(model)`` with SDPA attention (``Backend.HF_VIEW``), the same edit as ``hook_z``.
"""

from __future__ import annotations

import copy
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

from .data import Batch, Example, PromptStyle, answer_mask, collate, tokenize_example
from .edit import Backend, Edit, answer_positions, prepare_output_dir
from .errors import DataError, TrainingError
from .jola import JolaConfig, JolaEdit

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


class PenaltyMode(StrEnum):
    """``paper``: lam x mean P(gate open); ``released``: the released code's decaying schedule."""

    PAPER = "paper"
    RELEASED = "released"


class SelectionMetric(StrEnum):
    """What early stopping and best-epoch selection watch on the validation set."""

    VAL_CE = "val_ce"  # answer cross-entropy only (default: the penalty's lam does not leak in)
    VAL_LOSS = "val_loss"  # cross-entropy + penalty, as the released code's eval_loss


@dataclass(frozen=True)
class SparsityConfig:
    """The gate penalty.

    ``paper`` mode adds ``lam * sum_{l,h,type} P(g != 0) / n_gates``: lam times the expected
    fraction of open gates. ``released`` mode reproduces the released code exactly:
    ``lam_t * S_a / (L*H) + (1 - lam_t) * S_m / (L*H)`` with ``S_x = sum_l mean_h P(g_x != 0)``
    and ``lam_t = lambda0 * exp(-decay * t)``, ``t`` counting loss calls (evaluation batches
    too when ``released_count_eval``).
    """

    mode: PenaltyMode = PenaltyMode.PAPER
    lam: float = 2.0
    released_lambda0: float = 0.1
    released_decay: float = 0.01
    released_count_eval: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", PenaltyMode(self.mode))
        if self.lam < 0 or self.released_lambda0 < 0 or self.released_decay < 0:
            raise ValueError("sparsity weights must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe; defaults are the paper's (AdamW 5e-3, cosine, 50 warm-up steps)."""

    lr: float = 5e-3
    gate_lr_scale: float = 10.0
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
    backend: Backend = Backend.HF_VIEW
    selection: SelectionMetric = SelectionMetric.VAL_CE
    progress: bool = True
    # Train the end-of-sequence token after each answer, so that generation stops after it.
    # Off by default: the paper (and its released code, B6) trains the answer alone.
    answer_eos: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_style", PromptStyle(self.prompt_style))
        object.__setattr__(self, "backend", Backend(self.backend))
        object.__setattr__(self, "selection", SelectionMetric(self.selection))
        if self.gate_lr_scale <= 0:
            raise ValueError(f"gate_lr_scale must be > 0, got {self.gate_lr_scale}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("lr must be > 0 and epochs, batch sizes >= 1")
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
        ``head_maps.pt`` (the final ``[layer, head]`` maps) and ``summary.json``."""
        import json

        run_dir = prepare_output_dir(run_dir, overwrite=overwrite)
        self.edit.save(run_dir / "edit", overwrite=overwrite)
        self.history.to_csv(run_dir / "history.csv", index=False)
        if isinstance(self.edit, JolaEdit):
            torch.save(self.gate_history, run_dir / "gate_history.pt")
            torch.save(self.edit.head_maps(), run_dir / "head_maps.pt")
        (run_dir / "summary.json").write_text(json.dumps(self.summary(), indent=2) + "\n")
        return run_dir

    def summary(self) -> dict[str, Any]:
        """Best epoch, its validation CE, JoLA's closed-gate fraction per type, and the time taken."""
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
        if isinstance(self.edit, JolaEdit):
            out["closed_fraction"] = {k: 1.0 - v for k, v in self.edit.open_fractions().items()}
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


def sparsity_penalty(edit: JolaEdit, config: SparsityConfig, t: int) -> tuple[Tensor, float]:
    """The penalty term and the lambda used (``lam`` or the released schedule's ``lam_t``)."""
    hc = edit.config.gate
    probs = {name: hc.prob_open(getattr(edit, f"log_alpha_{name}")) for name in edit.gate_names}
    device = next(edit.parameters()).device
    if not probs:
        return torch.zeros((), device=device), 0.0
    if config.mode is PenaltyMode.PAPER:
        total = sum(p.sum() for p in probs.values())
        n_gates = sum(p.numel() for p in probs.values())
        return config.lam * total / n_gates, config.lam
    lam_t = config.released_lambda0 * math.exp(-config.released_decay * t)
    n_layers, n_heads = next(iter(probs.values())).shape
    norm = n_layers * n_heads

    def term(name: str) -> Tensor:
        p = probs.get(name, probs.get("shared"))
        return p.mean(dim=1).sum() / norm if p is not None else torch.zeros((), device=device)

    penalty = lam_t * term("additive") * edit.has_additive + (1 - lam_t) * term("multiplicative") * edit.has_multiplicative
    return penalty, lam_t


def _logits_at_answers(net: nn.Module, batch: Batch, backend: Backend) -> tuple[Tensor, Tensor]:
    """Logits and targets at the positions that predict answer tokens only.

    On the HF view the unembedding runs only where a loss is taken, which for a short answer
    after a long prompt saves most of its cost; the maths is unchanged.
    """
    targets = batch.labels[:, 1:]
    mask = targets != -100
    if not bool(mask.any()):
        raise DataError("a batch holds no answer tokens to supervise")
    with answer_positions(answer_mask(batch.labels)):
        if backend is Backend.HF_VIEW:
            hidden = net.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
            ).last_hidden_state
            picked = net.lm_head(hidden[:, :-1][mask])
        else:
            logits = net(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
            picked = logits[:, :-1][mask]
    return picked, targets[mask]


def _batches(rows: Sequence[tuple[list[int], list[int]]], size: int, pad_id: int, side: str, order: Sequence[int]) -> list[Batch]:
    return [collate([rows[j] for j in order[i : i + size]], pad_id, side) for i in range(0, len(order), size)]


def _tokenize_all(tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig, what: str) -> list[tuple[list[int], list[int]]]:
    if not examples:
        raise DataError(f"the {what} set is empty")
    eos_id = None
    if cfg.answer_eos:
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            raise DataError("answer_eos=True needs a tokenizer with an end-of-sequence token; this one has none")
    return [tokenize_example(tokenizer, ex, style=cfg.prompt_style, max_length=cfg.max_length, eos_id=eos_id)
            for ex in examples]


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

    Seeds are set before anything random happens; the edit of the best validation epoch is
    returned. A non-finite loss stops training with :class:`TrainingError`.
    """
    cfg = config or TrainConfig()
    sparsity = sparsity or SparsityConfig()
    seed_everything(cfg.seed)
    jola = jola or JolaConfig(seed=cfg.seed)
    edit = JolaEdit.for_model(model, jola)
    gate_params = [p for n, p in edit.named_parameters() if n.startswith("log_alpha_")]
    vector_params = [p for n, p in edit.named_parameters() if not n.startswith("log_alpha_")]
    groups = [{"params": vector_params, "lr": cfg.lr}]
    if gate_params:
        groups.append({"params": gate_params, "lr": cfg.lr * cfg.gate_lr_scale})
    return train_edit(
        model,
        edit,
        train,
        valid,
        config=cfg,
        param_groups=groups,
        regularizer=lambda t: sparsity_penalty(edit, sparsity, t),
        count_eval_steps=sparsity.mode is PenaltyMode.RELEASED and sparsity.released_count_eval,
        desc="JoLA",
    )


def train_edit(
    model: nn.Module,
    edit: Edit,
    train: Sequence[Example],
    valid: Sequence[Example],
    *,
    config: TrainConfig | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    regularizer: Callable[[int], tuple[Tensor, float]] | None = None,
    count_eval_steps: bool = False,
    desc: str | None = None,
) -> TrainResult:
    """Train any edit's parameters on answer-only cross-entropy (+ its regulariser).

    The one loop every trainable method shares: frozen base model, AdamW on the edit's
    ``param_groups`` (default: all its trainable parameters at ``config.lr``), warm-up then
    cosine decay, gradient clipping, validation CE each epoch, early stopping with
    ``patience``, and the best epoch's state restored. ``regularizer(t)`` defaults to
    ``edit.penalty``; ``t`` counts optimiser steps (and validation batches with
    ``count_eval_steps``, as the released JoLA code's schedule does).
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
    groups = param_groups if param_groups is not None else edit.param_groups(cfg.lr)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise TrainingError(f"the {edit.method} edit has no trainable parameters to train")
    regularizer = regularizer or edit.penalty
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.warmup_steps, total_steps))
    valid_batches = _batches(valid_rows, cfg.eval_batch_size, pad_id, cfg.padding_side, range(len(valid_rows)))
    order_gen = torch.Generator().manual_seed(cfg.seed)
    trainable = [p for g in groups for p in g["params"]]
    is_jola = isinstance(edit, JolaEdit)

    history: list[dict[str, Any]] = []
    gate_history: list[dict[str, Tensor]] = []
    best = (math.inf, -1, copy.deepcopy(edit.state_dict()))
    bad_epochs, t, step, stopped_early = 0, 0, 0, False
    start = time.perf_counter()
    if is_jola:  # epoch 0: the initial gates, so gate dynamics start where training started
        gate_history.append({**edit.head_maps(), "epoch": torch.tensor(0)})
    bar = tqdm(total=total_steps, desc=desc or edit.method, unit="step", disable=not cfg.progress)
    with freeze(model), edit.attached(model, cfg.backend) as net:
        for epoch in range(1, cfg.epochs + 1):
            edit.train()
            order = torch.randperm(len(train_rows), generator=order_gen).tolist()
            ce_sum = pen_sum = 0.0
            n_batches = 0
            lam = 0.0
            for batch in _batches(train_rows, cfg.batch_size, pad_id, cfg.padding_side, order):
                batch = batch.to(device)
                picked, targets = _logits_at_answers(net, batch, cfg.backend)
                ce = F.cross_entropy(picked.float(), targets)
                penalty, lam = regularizer(t)
                loss = ce + penalty
                if not torch.isfinite(loss):
                    bar.close()
                    raise TrainingError(
                        f"non-finite loss at epoch {epoch}, step {step + 1} (ce={ce.item()}, "
                        f"penalty={float(penalty.detach())}); lower the learning rate, use float32 or "
                        "bfloat16 instead of float16, and check the data for empty answers"
                    )
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
            val_ce, t_after = _validate(net, edit, valid_batches, device, cfg.backend, t if count_eval_steps else None)
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
            if is_jola:
                opened = edit.open_fractions()
                row["open_frac_additive"] = opened.get("additive", float("nan"))
                row["open_frac_multiplicative"] = opened.get("multiplicative", float("nan"))
                gate_history.append({**edit.head_maps(), "epoch": torch.tensor(epoch)})
            history.append(row)
            bar.set_postfix(epoch=epoch, val_ce=f"{val_ce:.3f}")
            metric = row[cfg.selection.value]
            if metric < best[0]:
                best = (metric, epoch, copy.deepcopy(edit.state_dict()))
                bad_epochs = 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    stopped_early = epoch < cfg.epochs
                    break
    bar.close()
    edit.load_state_dict(best[2])
    edit.eval()
    return TrainResult(
        edit=edit,
        history=pd.DataFrame(history),
        gate_history=gate_history,
        best_epoch=best[1],
        stopped_early=stopped_early,
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def _validate(
    net: nn.Module, edit: nn.Module | None, batches: list[Batch], device: torch.device, backend: Backend, t: int | None
) -> tuple[float, int | None]:
    """Validation answer CE (token mean, deterministic gates); ``t`` advanced per batch if given."""
    if edit is not None:
        edit.eval()
    total, count = 0.0, 0
    for batch in batches:
        picked, targets = _logits_at_answers(net, batch.to(device), backend)
        total += F.cross_entropy(picked.float(), targets, reduction="sum").item()
        count += targets.numel()
        if t is not None:
            t += 1
    return total / count, t


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
    if edit is None:
        from .hf_view import hf_view

        net = hf_view(model) if cfg.backend is Backend.HF_VIEW else model
        return _validate(net, None, batches, device, cfg.backend, None)[0]
    with edit.attached(model, cfg.backend) as net:
        was_training = edit.training
        try:
            return _validate(net, edit, batches, device, cfg.backend, None)[0]
        finally:
            edit.train(was_training)

