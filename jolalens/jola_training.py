"""How a JoLA edit trains: its expected-L0 gate penalty, its gate learning rate, its report.

:class:`~jolalens.jola.JolaEdit` delegates its training hooks (``penalty``, ``param_groups``,
``epoch_metrics``, ``epoch_maps``, ``summary_extras``) to the functions here, so the generic
trainer :func:`jolalens.train.train_edit` trains JoLA exactly as :func:`~jolalens.train.train_jola`
does without knowing which method it trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .jola import JolaEdit

__all__ = [
    "DEFAULT_GATE_LR_SCALE",
    "PenaltyMode",
    "SparsityConfig",
    "gate_param_groups",
    "gate_report",
    "sparsity_penalty",
]


DEFAULT_GATE_LR_SCALE = 10.0  # the paper's gates learn 10x faster than the edit vectors


class PenaltyMode(StrEnum):
    """``paper``: lam x mean P(gate open); ``released``: the released code's decaying schedule."""

    PAPER = "paper"
    RELEASED = "released"


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

    @property
    def counts_eval_steps(self) -> bool:
        """Whether the schedule's step ``t`` also advances on validation batches."""
        return self.mode is PenaltyMode.RELEASED and self.released_count_eval


def sparsity_penalty(edit: JolaEdit, config: SparsityConfig, t: int) -> tuple[Tensor, float]:
    """The penalty term and the lambda used (``lam`` or the released schedule's ``lam_t``)."""
    hc = edit.config.gate
    probs = {name: hc.prob_open(getattr(edit, f"log_alpha_{name}")) for name in edit.gate_names}
    device = next(edit.parameters()).device
    if not probs:
        return torch.zeros((), device=device), 0.0
    if config.mode is PenaltyMode.PAPER:
        total = cast(Tensor, sum(p.sum() for p in probs.values()))
        n_gates = sum(p.numel() for p in probs.values())
        return config.lam * total / n_gates, config.lam
    lam_t = config.released_lambda0 * math.exp(-config.released_decay * t)
    n_layers, n_heads = next(iter(probs.values())).shape
    norm = n_layers * n_heads

    def term(name: str) -> Tensor:
        p = probs.get(name, probs.get("shared"))
        if p is None:
            return torch.zeros((), device=device)
        return p.mean(dim=1).sum() / norm

    additive = lam_t * term("additive") * edit.has_additive
    multiplicative = (1 - lam_t) * term("multiplicative") * edit.has_multiplicative
    return additive + multiplicative, lam_t


def gate_param_groups(edit: JolaEdit, lr: float, gate_lr_scale: float) -> list[dict[str, Any]]:
    """Edit vectors at ``lr``, then the gates' ``log_alpha`` at ``lr * gate_lr_scale``."""
    gates = [p for n, p in edit.named_parameters() if n.startswith("log_alpha_")]
    vectors = [p for n, p in edit.named_parameters() if not n.startswith("log_alpha_")]
    groups: list[dict[str, Any]] = [{"params": vectors, "lr": lr}]
    if gates:
        groups.append({"params": gates, "lr": lr * gate_lr_scale})
    return groups


def gate_report(edit: JolaEdit) -> dict[str, float]:
    """History columns after an epoch: the fraction of open eval gates per edit type."""
    opened = edit.open_fractions()
    return {
        "open_frac_additive": opened.get("additive", float("nan")),
        "open_frac_multiplicative": opened.get("multiplicative", float("nan")),
    }
