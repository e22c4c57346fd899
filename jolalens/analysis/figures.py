"""Plotly figures of where the adaptation happens: head heatmaps, dynamics, similarity, bars.

Builders are pure: they take tensors or DataFrames and return a ``plotly.graph_objects.Figure``
(never calling ``show()``), so tests check their data. :func:`save_figure` writes each figure as
interactive HTML and as a static PNG (through kaleido, which needs a Chromium binary; see
:data:`PNG_SETUP`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from ..errors import JolaError
from .compare import head_label

__all__ = [
    "PNG_SETUP",
    "FigureExportError",
    "gate_dynamics",
    "head_heatmap",
    "method_bar",
    "save_figure",
    "save_figures",
    "side_by_side",
    "similarity_matrix",
    "training_curves",
]

PNG_SETUP = (
    "Static PNG export needs kaleido>=1 and a Chromium browser. On Debian/Ubuntu run:\n"
    "  apt-get update && apt-get install -y chromium\n"
    "  .venv/bin/pip install 'kaleido>=1.0'\n"
    "(or `make setup`). kaleido finds `chromium` on PATH; set BROWSER_PATH=/path/to/chrome "
    "to use another binary."
)

_FONT = {"family": "Arial, Helvetica, sans-serif", "size": 13}
_PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52")  # plotly's default
# Sequential maps start at white so a zero (closed gate, no effect) reads as "nothing".
_SEQUENTIAL = "Blues"
_DIVERGING = "RdBu_r"


class FigureExportError(JolaError, RuntimeError):
    """A figure could not be written as PNG; the message names the set-up that fixes it."""


def _map(values: Tensor, name: str = "values") -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 2:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{name} must be a [n_layers, n_heads] tensor, got {shape}")
    return values.detach().float().cpu()


def _labels(n_layers: int, n_heads: int) -> list[list[str]]:
    return [[head_label(lay, hd) for hd in range(n_heads)] for lay in range(n_layers)]


def _heatmap_trace(values: Tensor, colorbar_title: str, diverging: bool | None) -> go.Heatmap:
    n_layers, n_heads = values.shape
    finite = values[torch.isfinite(values)]
    lo = float(finite.min()) if finite.numel() else 0.0
    hi = float(finite.max()) if finite.numel() else 0.0
    if diverging is None:
        diverging = lo < 0 < hi
    z = values.tolist()
    common = {
        "z": z,
        "x": list(range(n_heads)),
        "y": list(range(n_layers)),
        "customdata": _labels(n_layers, n_heads),
        "hovertemplate": "%{customdata}<br>" + (colorbar_title or "value") + " = %{z:.4g}<extra></extra>",
        "colorbar": {"title": {"text": colorbar_title, "side": "right"}, "thickness": 14},
        "xgap": 1,
        "ygap": 1,
    }
    if diverging:
        bound = max(abs(lo), abs(hi)) or 1.0
        return go.Heatmap(**common, colorscale=_DIVERGING, zmid=0.0, zmin=-bound, zmax=bound)
    return go.Heatmap(**common, colorscale=_SEQUENTIAL, zmin=min(lo, 0.0), zmax=hi if hi > min(lo, 0.0) else 1.0)


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
) -> go.Figure:
    """A layer x head heatmap; hovering shows ``L{l}H{h}`` and the value.

    Signed data get a diverging scale centred on 0; non-negative data a white-based scale
    from 0, so an untouched head is white either way.
    """
    values = _map(values)
    n_layers, n_heads = values.shape
    fig = go.Figure(_heatmap_trace(values, colorbar_title, diverging))
    _grid_axes(fig, n_layers, n_heads)
    fig.update_layout(
        title={"text": title},
        font=_FONT,
        width=max(420, 150 + 34 * n_heads),
        height=max(360, 140 + 22 * n_layers),
        margin={"l": 70, "r": 40, "t": 70, "b": 60},
        plot_bgcolor="white",
    )
    return fig


def side_by_side(
    maps: Mapping[str, Float[Tensor, "n_layers n_heads"]],
    *,
    title: str = "",
    diverging: bool | None = None,
) -> go.Figure:
    """Several head maps next to each other (e.g. JoLA gates beside ablation scores), one colour bar each."""
    if not maps:
        raise ValueError("side_by_side needs at least one map")
    tensors = {name: _map(v, name) for name, v in maps.items()}
    shapes = {tuple(v.shape) for v in tensors.values()}
    if len(shapes) != 1:
        raise ValueError(f"maps differ in shape: {sorted(shapes)}")
    n_layers, n_heads = next(iter(shapes))
    n = len(tensors)
    spacing = 0.16 if n > 1 else 0.0
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(tensors), horizontal_spacing=spacing)
    width_each = (1.0 - spacing * (n - 1)) / n
    for i, (name, values) in enumerate(tensors.items()):
        trace = _heatmap_trace(values, name, diverging)
        trace.colorbar.x = (i + 1) * width_each + i * spacing + 0.01
        trace.colorbar.len = 0.9
        trace.colorbar.title.text = ""
        fig.add_trace(trace, row=1, col=i + 1)
        _grid_axes(fig, n_layers, n_heads, row=1, col=i + 1)
        if i > 0:  # one "layer" title, at the left; later panels would collide with colour bars
            fig.update_yaxes(title_text=None, row=1, col=i + 1)
    fig.update_layout(
        title={"text": title},
        font=_FONT,
        width=max(480, n * (190 + 34 * n_heads)),
        height=max(380, 150 + 22 * n_layers),
        margin={"l": 70, "r": 60, "t": 90, "b": 60},
        plot_bgcolor="white",
    )
    return fig


def gate_dynamics(
    gate_history: Sequence[Mapping[str, Tensor]],
    *,
    key: str = "gate_additive",
    max_heads: int = 12,
    title: str = "",
) -> go.Figure:
    """One line per head of ``gate_history[epoch][key]`` over epochs, named ``L{l}H{h}``.

    Only the ``max_heads`` heads with the largest final values are drawn (legend stays legible);
    the mean over all heads is drawn dashed.
    """
    if not gate_history:
        raise ValueError("gate_history is empty: train for at least one epoch")
    if any(key not in entry for entry in gate_history):
        available = sorted(gate_history[0])
        raise KeyError(f"{key!r} is missing from gate_history entries; available: {available}")
    stack = torch.stack([_map(entry[key], key) for entry in gate_history])  # [epochs, L, H]
    epochs = list(range(1, stack.shape[0] + 1))
    n_layers, n_heads = stack.shape[1:]
    final = stack[-1].flatten()
    order = torch.sort(-final, stable=True).indices[: max(0, max_heads)]
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
        title={"text": title or f"{key} over training"},
        xaxis_title="epoch",
        yaxis_title=key,
        font=_FONT,
        width=760,
        height=440,
        margin={"l": 70, "r": 30, "t": 70, "b": 60},
        legend={"title": {"text": "head"}},
        template="plotly_white",
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
        fig.add_trace(go.Scatter(x=history["epoch"], y=history[col], mode="lines+markers", name=col), row=1, col=1)
    for col in frac_cols:
        fig.add_trace(go.Scatter(x=history["epoch"], y=history[col], mode="lines+markers", name=col), row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="value", row=1, col=1)
    fig.update_yaxes(title_text="fraction open", range=[0, 1.05], row=1, col=2)
    fig.update_layout(
        title={"text": title or "training"},
        font=_FONT,
        width=1000,
        height=430,
        margin={"l": 70, "r": 30, "t": 80, "b": 60},
        template="plotly_white",
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
            colorscale=_SEQUENTIAL,
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
        font=_FONT,
        width=side + 80,
        height=side,
        margin={"l": 140, "r": 40, "t": 70, "b": 80},
        plot_bgcolor="white",
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
) -> go.Figure:
    """Bars of one metric per method (grouped by ``color`` if given); ``reference`` draws a dashed line.

    Use ``reference`` for a chance level (e.g. the random-set expected overlap) or a baseline,
    named by ``reference_label``.
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
                    marker_color=_PALETTE[i % len(_PALETTE)],
                    error_y={"type": "data", "array": sub[error].tolist()} if with_error else None,
                    text=[f"{v:.2f}" for v in sub[y]],
                    textposition="inside" if values_inside else "outside",
                    insidetextanchor="start",
                    cliponaxis=False,
                )
            )
    fig.update_xaxes(categoryorder="array", categoryarray=list(dict.fromkeys(frame[x].astype(str))))
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dash", line_color="gray", annotation_text=reference_label,
                      annotation_position="top left")
    fig.update_layout(
        title={"text": title},
        xaxis_title=x,
        yaxis_title=y,
        barmode="group",
        showlegend=color is not None,
        font=_FONT,
        width=max(520, 140 + 110 * frame[x].nunique()),
        height=440,
        margin={"l": 70, "r": 30, "t": 80, "b": 90},
        template="plotly_white",
    )
    return fig


def save_figure(
    fig: go.Figure, path: str | Path, *, scale: float = 2.0, include_plotlyjs: bool | str = "cdn"
) -> list[Path]:
    """Write ``path.html`` (interactive) and ``path.png`` (static); returns both paths.

    ``path`` has no suffix. The HTML loads plotly.js from its CDN by default (small files);
    pass ``include_plotlyjs=True`` for a self-contained file that opens offline. Raises
    :class:`FigureExportError` naming the set-up when PNG export is unavailable.
    """
    return save_figures([(fig, path)], scale=scale, include_plotlyjs=include_plotlyjs)


def save_figures(
    items: Sequence[tuple[go.Figure, str | Path]], *, scale: float = 2.0, include_plotlyjs: bool | str = "cdn"
) -> list[Path]:
    """:func:`save_figure` for many figures, sharing one browser for the PNGs (much faster).

    Every PNG is checked afterwards: one the shared render dropped is rendered again alone, and
    one that still cannot be written raises :class:`FigureExportError` naming it.
    """
    html_paths, png_paths = [], []
    for fig, path in items:
        path = Path(path)
        if path.suffix in {".html", ".png"}:
            path = path.with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        html, png = path.with_suffix(".html"), path.with_suffix(".png")
        # a fixed element id (plotly draws a random one): the same figure gives the same bytes
        fig.write_html(html, include_plotlyjs=include_plotlyjs, full_html=True, div_id=f"jolalens-{path.name}")
        html_paths.append(html)
        png_paths.append(png)
    if not items:
        return []
    try:
        import kaleido  # noqa: F401
    except ImportError as exc:
        raise FigureExportError(f"Cannot write {png_paths[0]}: kaleido is not installed.\n{PNG_SETUP}") from exc
    import plotly.io as pio

    stamps = {png: _stamp(png) for png in png_paths}
    try:
        pio.write_images([fig for fig, _ in items], png_paths, format="png", scale=scale)
    except Exception as exc:  # kaleido/choreographer raise assorted types when Chrome is missing
        raise _export_error(png_paths[0], exc) from exc
    # kaleido's batch call returns a figure's render error instead of raising it, after deleting
    # that figure's old PNG (seen once: a render that timed out on a loaded 2-core machine).
    # Redo each PNG the batch did not write, one at a time, where an error does raise.
    for (fig, _), png in zip(items, png_paths, strict=True):
        if _stamp(png) is None or _stamp(png) == stamps[png]:
            try:
                pio.write_image(fig, png, format="png", scale=scale)
            except Exception as exc:
                raise _export_error(png, exc) from exc
            if _stamp(png) is None:
                raise FigureExportError(f"Cannot write {png}: kaleido reported success but wrote no file.\n{PNG_SETUP}")
    return [p for pair in zip(html_paths, png_paths, strict=True) for p in pair]


def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's (size, mtime in ns), or ``None`` when it is missing or empty."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if stat.st_size else None


def _export_error(png: Path, exc: Exception) -> FigureExportError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return FigureExportError(f"Cannot write {png}: {type(exc).__name__}: {first}\n{PNG_SETUP}")
