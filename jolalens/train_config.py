"""The optimisation recipe of every trainable method (:class:`TrainConfig`) and what selects its best epoch."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .data import PromptStyle
from .edit import Backend
from .jola_training import DEFAULT_GATE_LR_SCALE
from .validation import check_lr, check_positive_int

__all__ = ["SelectionMetric", "TrainConfig"]


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
    # Recompute each decoder layer's activations in the backward instead of keeping them: less
    # memory (the residual stream per layer instead of every layer's internals), one more
    # forward pass per step; the same training run (jolalens.checkpointing).
    checkpoint_activations: bool = False
    # Cut each run of this many batches of the shuffled order by length (less padding, a
    # different batch composition than the paper's plain shuffle); 1: off.
    length_grouping: int = 1

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
        for name in ("epochs", "batch_size", "eval_batch_size", "length_grouping"):
            check_positive_int(getattr(self, name), name)
        if self.warmup_steps < 0 or self.patience < 1 or self.max_length < 2:
            raise ValueError("warmup_steps >= 0, patience >= 1 and max_length >= 2 are required")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
