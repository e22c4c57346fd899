"""Line and bar figures: gate dynamics from epoch 0, training curves, method bars.

Builders are pure (they return a ``plotly.graph_objects.Figure`` and never call ``show()``).
Epoch axes tick at integers and include epoch 0 (the initial gates) when the history has it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from .compare import head_label, jaccard
from .figures_style import FONT, PALETTE, epoch_axis, human_label

__all__ = [
    "gate_dynamics",
    "history_epochs",
    "method_bar",
    "selection_dynamics",
    "selection_over_training",
    "training_curves",
]

_UNIT_KEYS = ("gate_", "p_open_")  # values in [0, 1]: a fixed axis


def history_epochs(gate_history: Sequence[Mapping[str, Tensor]]) -> list[int]:
    """The epoch of each entry: its ``"epoch"`` value (0 = initial gates), else 1, 2, ... (older runs)."""
    if all("epoch" in entry for entry in gate_history):
        return [int(entry["epoch"]) for entry in gate_history]
    return list(range(1, len(gate_history) + 1))


def _stack(gate_history: Sequence[Mapping[str, Tensor]], key: str) -> Tensor:
    if not gate_history:
        raise ValueError("gate_history is empty: train for at least one epoch")
    if any(key not in entry for entry in gate_history):
        available = sorted(k for k in gate_history[0] if k != "epoch")
        raise KeyError(f"{key!r} is missing from gate_history entries; available: {available}")
    return torch.stack([entry[key].detach().float().cpu() for entry in gate_history])  # [epochs, L, H]


def gate_dynamics(
    gate_history: Sequence[Mapping[str, Tensor]],
    *,
    key: str = "gate_additive",
    max_heads: int = 12,
    title: str = "",
) -> go.Figure:
    """One line per head of ``gate_history[i][key]`` over epochs (from epoch 0), named ``L{l}H{h}``.

    Only the ``max_heads`` heads with the largest final values are drawn (legend stays legible);
    the mean over all heads is drawn dashed. Gates and P(open) get a fixed [0, 1] axis.
    """
    stack = _stack(gate_history, key)
    epochs = history_epochs(gate_history)
    n_heads = stack.shape[2]
    order = torch.sort(-stack[-1].flatten(), stable=True).indices[: max(0, max_heads)]
    fig = go.Figure()
    for idx in order.tolist():
        lay, hd = divmod(idx, n_heads)
        fig.add_trace(
            go.Scatter(x=epochs, y=stack[:, lay, hd].tolist(), mode="lines+markers", name=head_label(lay, hd))
        )
    fig.add_trace(
        go.Scatter(
            x=epochs,
            y=stack.flatten(1).mean(1).tolist(),
            mode="lines",
            name="mean (all heads)",
            line={"dash": "dash", "color": "black"},
        )
    )
    fig.update_layout(
        title={"text": title or f"{human_label(key)} over training"},
        yaxis_title=human_label(key),
        font=FONT,
        width=760,
        height=440,
        margin={"l": 70, "r": 30, "t": 70, "b": 60},
        legend={"title": {"text": "head"}},
        template="plotly_white",
    )
    epoch_axis(fig, epochs)
    if key.startswith(_UNIT_KEYS):
        fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def selection_over_training(
    gate_history: Sequence[Mapping[str, Tensor]], *, key: str = "gate_additive"
) -> pd.DataFrame:
    """Per epoch: how many heads are open (value > 0), Jaccard with the final set, heads added and dropped."""
    stack = _stack(gate_history, key)
    n_heads = stack.shape[2]
    sets = [{divmod(int(i), n_heads) for i in (m.flatten() > 0).nonzero().flatten()} for m in stack]
    rows = []
    for i, (epoch, heads) in enumerate(zip(history_epochs(gate_history), sets, strict=True)):
        before = sets[i - 1] if i else heads
        rows.append(
            {
                "epoch": epoch,
                "n_open": len(heads),
                "jaccard_to_final": jaccard(heads, sets[-1]),
                "added": len(heads - before),
                "dropped": len(before - heads),
            }
        )
    return pd.DataFrame(rows)


def selection_dynamics(frame: pd.DataFrame, *, title: str = "") -> go.Figure:
    """:func:`selection_over_training` drawn: open heads (left axis) and Jaccard with the final set (right)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(x=frame["epoch"], y=frame["n_open"], mode="lines+markers", name=human_label("n_open")),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=frame["epoch"],
            y=frame["jaccard_to_final"],
            mode="lines+markers",
            name=human_label("jaccard_to_final"),
            line={"dash": "dot"},
        ),
        secondary_y=True,
    )
    fig.update_yaxes(title_text=human_label("n_open"), rangemode="tozero", secondary_y=False)
    fig.update_yaxes(
        title_text=human_label("jaccard_to_final"),
        range=[0, 1.02],
        tickmode="linear",
        tick0=0,
        dtick=0.2,
        showgrid=False,
        secondary_y=True,
    )
    epoch_axis(fig, frame["epoch"].tolist())
    fig.update_layout(
        title={"text": title or "the selected heads over training"},
        font=FONT,
        width=760,
        height=420,
        margin={"l": 70, "r": 70, "t": 70, "b": 60},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def training_curves(history: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Losses (train/val CE, penalty) and open-gate fractions per epoch from ``result.history``."""
    if "epoch" not in history.columns or history.empty:
        raise ValueError("history needs an 'epoch' column and at least one row")
    loss_cols = [c for c in ("train_ce", "val_ce", "train_penalty") if c in history.columns]
    frac_cols = [c for c in history.columns if c.startswith("open_frac")]
    if not loss_cols and not frac_cols:
        raise ValueError(f"history has none of train_ce/val_ce/open_frac_*: columns {list(history.columns)}")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["loss", "fraction of gates open"], horizontal_spacing=0.12)
    for col in loss_cols:
        fig.add_trace(
            go.Scatter(x=history["epoch"], y=history[col], mode="lines+markers", name=human_label(col)), row=1, col=1
        )
    for col in frac_cols:
        fig.add_trace(
            go.Scatter(x=history["epoch"], y=history[col], mode="lines+markers", name=human_label(col)), row=1, col=2
        )
    epoch_axis(fig, history["epoch"].tolist())
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)
    fig.update_yaxes(title_text="fraction open", range=[0, 1.05], row=1, col=2)
    fig.update_layout(
        title={"text": title or "training"},
        font=FONT,
        width=1000,
        height=430,
        margin={"l": 70, "r": 30, "t": 80, "b": 60},
        template="plotly_white",
    )
    return fig


def method_bar(
    frame: pd.DataFrame,
    *,
    x: str = "method",
    y: str = "overlap_at_k",
    color: str | None = None,
    error: str | None = None,
    title: str = "",
    reference: float | None = None,
    reference_label: str = "chance",
    x_title: str | None = None,
    y_title: str | None = None,
) -> go.Figure:
    """Bars of one metric per method (grouped by ``color`` if given); ``reference`` draws a dashed line.

    Use ``reference`` for a chance level or a baseline, named by ``reference_label``. Axis
    titles default to :func:`human_label` of the column names.
    """
    missing = [c for c in (x, y, color, error) if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError("method_bar got an empty frame")
    groups = [(None, frame)] if color is None else list(frame.groupby(color, sort=False))
    # with error bars, the values sit inside the bars at their base, clear of the whiskers
    values_inside = error is not None and bool(frame[error].notna().any())
    fig = go.Figure()
    for i, (name, part) in enumerate(groups):
        label = str(name) if name is not None else y
        # a bar without a spread (one seed: std is NaN) gets no error bar, not a zero-width one
        spread = part[error].notna() if error else pd.Series(False, index=part.index)
        for with_error, sub in ((True, part[spread]), (False, part[~spread])):
            if sub.empty:
                continue
            fig.add_trace(
                go.Bar(
                    x=sub[x].astype(str).tolist(),
                    y=sub[y].tolist(),
                    name=label,
                    legendgroup=label,
                    offsetgroup=label,  # both parts of a group share its slot in each x category
                    showlegend=color is not None and not any(t.name == label for t in fig.data),
                    marker_color=PALETTE[i % len(PALETTE)],
                    error_y={"type": "data", "array": sub[error].tolist()} if with_error else None,
                    text=[f"{v:.2f}" for v in sub[y]],
                    textposition="inside" if values_inside else "outside",
                    insidetextanchor="start",
                    cliponaxis=False,
                )
            )
    fig.update_xaxes(categoryorder="array", categoryarray=list(dict.fromkeys(frame[x].astype(str))))
    if reference is not None:
        fig.add_hline(
            y=reference,
            line_dash="dash",
            line_color="gray",
            annotation_text=reference_label,
            annotation_position="top left",
        )
    fig.update_layout(
        title={"text": title},
        xaxis_title=x_title or human_label(x),
        yaxis_title=y_title or human_label(y),
        barmode="group",
        showlegend=color is not None,
        font=FONT,
        width=max(520, 140 + 110 * frame[x].nunique()),
        height=440,
        margin={"l": 70, "r": 30, "t": 80, "b": 90},
        template="plotly_white",
    )
    return fig
