"""The colour and label rules every jolalens figure follows (one place, so figures agree).

* Zero is white. Non-negative quantities use the sequential :data:`SEQUENTIAL` map from 0;
  signed quantities use the diverging :data:`DIVERGING` map centred at 0 (red = positive,
  blue = negative), so red means "more" in every panel and blue only ever means "negative".
* Gates and probabilities sit on a fixed [0, 1] scale; probe accuracies on [chance, 1].
* Axes and colour bars carry human labels (:func:`human_label`); epochs tick at integers.
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

__all__ = ["DIVERGING", "FONT", "LABELS", "PALETTE", "SEQUENTIAL", "epoch_axis", "human_label"]

FONT = {"family": "Arial, Helvetica, sans-serif", "size": 13}
PALETTE = (
    "#636efa",
    "#ef553b",
    "#00cc96",
    "#ab63fa",
    "#ffa15a",
    "#19d3f3",
    "#ff6692",
    "#b6e880",
    "#ff97ff",
    "#fecb52",
)  # plotly's default
SEQUENTIAL = "Reds"  # white at 0, the positive half of DIVERGING
DIVERGING = "RdBu_r"  # blue < 0 < red, white at 0

LABELS = {
    "gate_additive": "additive gate",
    "gate_multiplicative": "multiplicative gate",
    "p_open_additive": "P(gate open), additive",
    "p_open_multiplicative": "P(gate open), multiplicative",
    "norm_additive": "additive edit norm",
    "norm_multiplicative": "multiplicative edit norm",
    "train_ce": "train cross-entropy",
    "val_ce": "validation cross-entropy",
    "val_loss": "validation loss",
    "train_penalty": "gate penalty",
    "open_frac_additive": "additive gates open",
    "open_frac_multiplicative": "multiplicative gates open",
    "overlap_at_k": "overlap@k",
    "logprob_drop": "log-prob drop",
    "accuracy_drop": "accuracy drop",
    "probe_accuracy": "probe accuracy",
    "mean": "mean score",
    "n_open": "open heads",
    "jaccard_to_final": "Jaccard with the final set",
}


def human_label(name: str) -> str:
    """A column or map name as a reader would write it: ``val_ce`` -> ``validation cross-entropy``."""
    return LABELS.get(name, name.replace("_", " "))


def epoch_axis(fig: go.Figure, epochs: list[int] | Any, **where: Any) -> None:
    """Integer epoch ticks (never 1.5), at most ~15 of them, titled "epoch"."""
    values = [int(e) for e in epochs]
    span = (max(values) - min(values)) if values else 1
    fig.update_xaxes(
        title_text="epoch",
        tickmode="linear",
        tick0=min(values, default=0),
        dtick=max(1, math.ceil(span / 15)),
        tickformat="d",
        **where,
    )
