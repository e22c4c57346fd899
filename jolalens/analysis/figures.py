"""Plotly head maps (layer x head heatmaps) and similarity matrices, by the rules of figures_style.

Builders are pure: they take tensors or DataFrames and return a ``plotly.graph_objects.Figure``
(never calling ``show()``), so tests check their data. Colour scales: gates and probabilities
on a fixed [0, 1] (:func:`gate_heatmap`), probe accuracies from chance to 1
(:func:`probe_heatmap`), signed maps diverging around 0, other non-negative maps from 0.
Line figures live in :mod:`.figures_lines`, file export in :mod:`.figures_export` (both
re-exported here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from .compare import head_label
from .figures_export import FORMATS, PNG_SETUP, FigureExportError, save_figure, save_figures
from .figures_lines import (
    gate_dynamics,
    history_epochs,
    method_bar,
    selection_dynamics,
    selection_over_training,
    training_curves,
)
from .figures_style import DIVERGING, FONT, SEQUENTIAL

__all__ = [
    "FORMATS",
    "PNG_SETUP",
    "FigureExportError",
    "gate_dynamics",
    "gate_heatmap",
    "head_heatmap",
    "history_epochs",
    "method_bar",
    "probe_heatmap",
    "save_figure",
    "save_figures",
    "selection_dynamics",
    "selection_over_training",
    "side_by_side",
    "similarity_matrix",
    "training_curves",
]

log = logging.getLogger(__name__)

Range = tuple[float | None, float | None]


def _map(values: Tensor, name: str = "values") -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 2:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{name} must be a [n_layers, n_heads] tensor, got {shape}")
    return values.detach().float().cpu()


def _labels(n_layers: int, n_heads: int) -> list[list[str]]:
    return [[head_label(lay, hd) for hd in range(n_heads)] for lay in range(n_layers)]


def _heatmap_trace(
    values: Tensor, colorbar_title: str, diverging: bool | None, zmin: float | None = None, zmax: float | None = None
) -> go.Heatmap:
    """Diverging (centred at 0, symmetric) when the map is signed or ``diverging`` says so; else sequential from 0."""
    n_layers, n_heads = values.shape
    finite = values[torch.isfinite(values)]
    lo = float(finite.min()) if finite.numel() else 0.0
    hi = float(finite.max()) if finite.numel() else 0.0
    if diverging is None:
        diverging = lo < 0
    common = {
        "z": values.tolist(),
        "x": list(range(n_heads)),
        "y": list(range(n_layers)),
        "customdata": _labels(n_layers, n_heads),
        "hovertemplate": "%{customdata}<br>" + (colorbar_title or "value") + " = %{z:.4g}<extra></extra>",
        "colorbar": {"title": {"text": colorbar_title, "side": "right"}, "thickness": 14},
        "xgap": 1,
        "ygap": 1,
    }
    if diverging:
        given = [abs(v) for v in (zmin, zmax) if v is not None]
        bound = max(given) if given else (max(abs(lo), abs(hi)) or 1.0)
        return go.Heatmap(**common, colorscale=DIVERGING, zmid=0.0, zmin=-bound, zmax=bound)
    low = 0.0 if zmin is None else float(zmin)
    high = (hi if hi > low else low + 1.0) if zmax is None else float(zmax)
    if zmin is None and lo < 0:
        log.warning("a sequential map got negative values (min %.3g); pass diverging=None to centre it at 0", lo)
        low = lo
    return go.Heatmap(**common, colorscale=SEQUENTIAL, zmin=low, zmax=high)


def _grid_axes(fig: go.Figure, n_layers: int, n_heads: int, row: int | None = None, col: int | None = None) -> None:
    head_step = max(1, math.ceil(n_heads / 16))
    layer_step = max(1, math.ceil(n_layers / 16))
    fig.update_xaxes(title_text="head", tickmode="linear", dtick=head_step, tick0=0, row=row, col=col)
    fig.update_yaxes(
        title_text="layer", tickmode="linear", dtick=layer_step, tick0=0, autorange="reversed", row=row, col=col
    )


def head_heatmap(
    values: Float[Tensor, "n_layers n_heads"],
    *,
    title: str = "",
    colorbar_title: str = "",
    diverging: bool | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
) -> go.Figure:
    """A layer x head heatmap; hovering shows ``L{l}H{h}`` and the value.

    Signed data get a diverging scale centred on 0 (symmetric, ``zmid=0``); non-negative data
    a white-based sequential scale from 0 to the maximum. ``zmin``/``zmax`` fix the range
    (for a diverging map, the larger magnitude sets both ends).
    """
    values = _map(values)
    n_layers, n_heads = values.shape
    fig = go.Figure(_heatmap_trace(values, colorbar_title, diverging, zmin, zmax))
    _grid_axes(fig, n_layers, n_heads)
    fig.update_layout(
        title={"text": title},
        font=FONT,
        width=max(420, 150 + 34 * n_heads),
        height=max(360, 140 + 22 * n_layers),
        margin={"l": 70, "r": 40, "t": 70, "b": 60},
        plot_bgcolor="white",
    )
    return fig


def gate_heatmap(
    gates: Float[Tensor, "n_layers n_heads"],
    *,
    title: str = "",
    colorbar_title: str = "P(gate open)",
    zmin: float = 0.0,
    zmax: float = 1.0,
) -> go.Figure:
    """Gate values or P(gate open) per head on a fixed [0, 1] scale, so runs compare by eye."""
    return head_heatmap(gates, title=title, colorbar_title=colorbar_title, diverging=False, zmin=zmin, zmax=zmax)


def probe_heatmap(
    accuracy: Float[Tensor, "n_layers n_heads"],
    *,
    chance: float = 0.5,
    title: str = "",
    colorbar_title: str = "probe accuracy",
) -> go.Figure:
    """ITI probe accuracy per head scaled from ``chance`` (0.5 for a balanced probe) to 1."""
    if not 0.0 <= chance < 1.0:
        raise ValueError(f"chance must be in [0, 1), got {chance}")
    return head_heatmap(accuracy, title=title, colorbar_title=colorbar_title, diverging=False, zmin=chance, zmax=1.0)


def side_by_side(
    maps: Mapping[str, Float[Tensor, "n_layers n_heads"]],
    *,
    title: str = "",
    diverging: bool | None = None,
    ranges: Mapping[str, Range] | None = None,
) -> go.Figure:
    """Several head maps next to each other (e.g. JoLA gates beside ablation scores), one colour bar each.

    ``ranges`` fixes a panel's colour range by name, e.g. ``{"JoLA gate": (0, 1)}``; every
    other panel follows :func:`head_heatmap`'s rule (signed: diverging at 0; else from 0).
    """
    if not maps:
        raise ValueError("side_by_side needs at least one map")
    tensors = {name: _map(v, name) for name, v in maps.items()}
    ranges = dict(ranges or {})
    unknown = sorted(set(ranges) - set(tensors))
    if unknown:
        raise ValueError(f"ranges names panel(s) {unknown} that maps lacks; panels: {list(tensors)}")
    shapes = {tuple(v.shape) for v in tensors.values()}
    if len(shapes) != 1:
        raise ValueError(f"maps differ in shape: {sorted(shapes)}")
    n_layers, n_heads = next(iter(shapes))
    n = len(tensors)
    spacing = 0.16 if n > 1 else 0.0
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(tensors), horizontal_spacing=spacing)
    width_each = (1.0 - spacing * (n - 1)) / n
    for i, (name, values) in enumerate(tensors.items()):
        zmin, zmax = ranges.get(name, (None, None))
        panel_diverging = diverging
        if diverging is None and name in ranges:  # a fixed range: diverging only when it reaches below 0
            panel_diverging = zmin is not None and zmin < 0
        trace = _heatmap_trace(values, name, panel_diverging, zmin, zmax)
        trace.colorbar.x = (i + 1) * width_each + i * spacing + 0.01
        trace.colorbar.len = 0.9
        trace.colorbar.title.text = ""
        fig.add_trace(trace, row=1, col=i + 1)
        _grid_axes(fig, n_layers, n_heads, row=1, col=i + 1)
        if i > 0:  # one "layer" title, at the left; later panels would collide with colour bars
            fig.update_yaxes(title_text=None, row=1, col=i + 1)
    fig.update_layout(
        title={"text": title},
        font=FONT,
        width=max(480, n * (190 + 34 * n_heads)),
        height=max(380, 150 + 22 * n_layers),
        margin={"l": 70, "r": 60, "t": 90, "b": 60},
        plot_bgcolor="white",
    )
    return fig


def similarity_matrix(matrix: pd.DataFrame, *, title: str = "", value_name: str = "Jaccard") -> go.Figure:
    """A square similarity matrix (e.g. :func:`jaccard_matrix` across seeds or tasks), values printed."""
    if matrix.shape[0] != matrix.shape[1] or matrix.empty:
        raise ValueError(f"similarity_matrix needs a non-empty square DataFrame, got shape {matrix.shape}")
    names = [str(n) for n in matrix.index]
    z = matrix.to_numpy(dtype=float).tolist()
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(c) for c in matrix.columns],
            y=names,
            colorscale=SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            text=[[f"{v:.2f}" for v in row] for row in z],
            texttemplate="%{text}",
            hovertemplate="%{y} vs %{x}<br>" + value_name + " = %{z:.3f}<extra></extra>",
            colorbar={"title": {"text": value_name, "side": "right"}},
        )
    )
    side = max(420, 160 + 60 * len(names))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title={"text": title},
        font=FONT,
        width=side + 80,
        height=side,
        margin={"l": 140, "r": 40, "t": 70, "b": 80},
        plot_bgcolor="white",
    )
    return fig
