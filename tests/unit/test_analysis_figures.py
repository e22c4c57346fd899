"""Figure builders checked on their data; PNG export checked for a file or a clear error."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from jolalens.analysis import (
    FigureExportError,
    gate_dynamics,
    head_heatmap,
    method_bar,
    save_figure,
    save_figures,
    side_by_side,
    similarity_matrix,
    training_curves,
)


def test_heatmap_holds_the_values_and_labels():
    values = torch.arange(8.0).reshape(2, 4)
    fig = head_heatmap(values, title="gates", colorbar_title="gate")
    trace = fig.data[0]
    assert [list(row) for row in trace.z] == values.tolist()
    assert trace.customdata[1][2] == "L1H2"
    assert "%{customdata}" in trace.hovertemplate
    assert trace.colorscale[0][1] in {"rgb(255,245,240)", "#fff5f0"}  # sequential Reds, (near) white at 0
    assert trace.zmin == 0.0 and trace.zmax == 7.0
    assert fig.layout.yaxis.autorange == "reversed"  # layer 0 on top
    signed = head_heatmap(values - 3.0).data[0]
    assert signed.zmid == 0.0 and signed.zmin == -4.0 and signed.zmax == 4.0


def test_side_by_side_keeps_each_map():
    a, b = torch.rand(3, 5), -torch.rand(3, 5)
    fig = side_by_side({"JoLA gate": a, "ablation": b})
    assert len(fig.data) == 2
    assert [ann.text for ann in fig.layout.annotations] == ["JoLA gate", "ablation"]
    torch.testing.assert_close(torch.tensor(fig.data[1].z), b)
    assert fig.data[0].colorbar.x < fig.data[1].colorbar.x <= 1.05
    assert fig.data[1].customdata[2][4] == "L2H4"
    with pytest.raises(ValueError, match="differ in shape"):
        side_by_side({"a": a, "b": torch.rand(2, 5)})


def test_gate_dynamics_lines_per_head():
    history = [{"gate_additive": torch.tensor([[0.1 * e, 0.0], [0.5, 1.0 - 0.1 * e]])} for e in range(3)]
    fig = gate_dynamics(history, max_heads=2)
    names = [t.name for t in fig.data]
    assert names == ["L1H1", "L1H0", "mean (all heads)"]
    assert list(fig.data[0].y) == pytest.approx([1.0, 0.9, 0.8])
    assert list(fig.data[0].x) == [1, 2, 3], "an older history without epoch keys counts from 1"
    with_initial = [{**entry, "epoch": torch.tensor(e)} for e, entry in enumerate(history)]
    assert list(gate_dynamics(with_initial).data[0].x) == [0, 1, 2], "the trainer's epoch 0 is drawn"
    with pytest.raises(KeyError, match="gate_multiplicative"):
        gate_dynamics(history, key="gate_multiplicative")


def test_training_curves_and_similarity_and_bars():
    hist = pd.DataFrame(
        {"epoch": [1, 2], "train_ce": [2.0, 1.5], "val_ce": [2.1, 1.7], "open_frac_additive": [1.0, 0.4]}
    )
    fig = training_curves(hist)
    assert {t.name for t in fig.data} == {"train cross-entropy", "validation cross-entropy", "additive gates open"}
    matrix = pd.DataFrame([[1.0, 0.25], [0.25, 1.0]], index=["s0", "s1"], columns=["s0", "s1"])
    sim = similarity_matrix(matrix).data[0]
    assert [list(r) for r in sim.z] == [[1.0, 0.25], [0.25, 1.0]]
    assert sim.text[0][1] == "0.25" and list(sim.x) == ["s0", "s1"]
    bars = method_bar(pd.DataFrame({"method": ["JoLA", "random"], "overlap_at_k": [0.75, 0.1]}), reference=0.1)
    assert list(bars.data[0].x) == ["JoLA", "random"] and list(bars.data[0].y) == [0.75, 0.1]
    assert bars.layout.shapes[0].y0 == 0.1
    with pytest.raises(ValueError, match="lacks column"):
        method_bar(pd.DataFrame({"method": ["a"]}))


def test_method_bar_draws_error_bars_only_where_there_is_a_spread():
    frame = pd.DataFrame(
        {"method": ["jola", "iti", "red"], "score": [0.28, 0.22, 0.25], "std": [0.02, 0.04, float("nan")]}
    )
    fig = method_bar(frame, x="method", y="score", error="std")
    with_bars = [t for t in fig.data if t.error_y.array is not None]
    without = [t for t in fig.data if t.error_y.array is None]
    assert [list(t.x) for t in with_bars] == [["jola", "iti"]] and list(with_bars[0].error_y.array) == [0.02, 0.04]
    assert [list(t.x) for t in without] == [["red"]], "one seed: no zero-width error bar"
    assert list(fig.layout.xaxis.categoryarray) == ["jola", "iti", "red"], "the frame's order is kept"
    assert len({t.marker.color for t in fig.data}) == 1 and not any(t.showlegend for t in fig.data)
    grouped = method_bar(frame.assign(task=["a", "a", "b"]), x="method", y="score", error="std", color="task")
    assert [t.name for t in grouped.data if t.showlegend] == ["a", "b"], "one legend entry per group"
    assert {t.offsetgroup for t in grouped.data} == {"a", "b"}
    assert {t.textposition for t in fig.data} == {"inside"}, "values clear of the whiskers"
    plain = method_bar(frame.assign(std=float("nan")), x="method", y="score", error="std")
    assert {t.textposition for t in plain.data} == {"outside"}, "no error bars: values above the bars"


def test_save_figure_names_the_fix_without_kaleido(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido -> ImportError
    with pytest.raises(FigureExportError, match="apt-get install -y chromium"):
        save_figure(head_heatmap(torch.rand(2, 2)), tmp_path / "fig")
    assert (tmp_path / "fig.html").is_file()


def test_saved_html_is_the_same_bytes_for_the_same_figure(tmp_path, monkeypatch):
    """No random element id: re-running a report does not rewrite unchanged figures."""
    monkeypatch.setitem(sys.modules, "kaleido", None)  # HTML only
    fig = head_heatmap(torch.arange(4.0).reshape(2, 2))
    pages = []
    for name in ("a", "b"):
        with pytest.raises(FigureExportError):
            save_figure(fig, tmp_path / name / "fig")
        pages.append((tmp_path / name / "fig.html").read_bytes())
    assert pages[0] == pages[1]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="PNG export needs chromium (see PNG_SETUP)")
def test_save_figure_writes_offline_html_png_pdf_and_svg(tmp_path):
    paths = save_figure(head_heatmap(torch.rand(3, 4), title="t"), tmp_path / "heat.png")
    assert [p.name for p in paths] == ["heat.html", "heat.png", "heat.pdf", "heat.svg"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[2].read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in paths[3].read_bytes()[:2000]
    html = paths[0].read_text()
    assert "L2H3" in html
    # plotly.js itself is inside (opens offline), and no script is fetched from a CDN
    assert "Copyright (c) Plotly" in html or "plotly.js v" in html
    assert not re.findall(r"<script[^>]*\bsrc=", html), "no script is loaded from elsewhere (a CDN)"


def test_save_figure_names_the_fix_without_chrome(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    with pytest.raises(FigureExportError, match="BROWSER_PATH"):
        save_figure(head_heatmap(torch.rand(2, 2)), tmp_path / "fig")


def _fake_kaleido(monkeypatch, *, batch_skips: set[str], single_writes: bool = True):
    """Stand in for kaleido: the batch call silently skips (and deletes) some PNGs, as kaleido does."""
    import plotly.io as pio

    pytest.importorskip("kaleido")
    singles = []

    def write_images(figs, paths, **kwargs):
        for path in paths:
            path = Path(path)
            if path.name in batch_skips:
                path.unlink(missing_ok=True)  # kaleido deletes the old file on a render error
            else:
                path.write_bytes(b"\x89PNG batch")

    def write_image(fig, path, **kwargs):
        singles.append(Path(path).name)
        if single_writes:
            Path(path).write_bytes(b"\x89PNG single")

    monkeypatch.setattr(pio, "write_images", write_images)
    monkeypatch.setattr(pio, "write_image", write_image)
    return singles


def test_save_figures_redoes_a_png_the_batch_silently_dropped(tmp_path, monkeypatch):
    singles = _fake_kaleido(monkeypatch, batch_skips={"b.png"})
    (tmp_path / "b.png").write_bytes(b"old")
    fig = head_heatmap(torch.rand(2, 2))
    save_figures([(fig, tmp_path / "a"), (fig, tmp_path / "b")])
    assert singles == ["b.png"], "only the dropped figure is rendered again"
    assert (tmp_path / "a.png").read_bytes() == b"\x89PNG batch"
    assert (tmp_path / "b.png").read_bytes() == b"\x89PNG single"


def test_save_figures_raises_naming_a_png_that_cannot_be_written(tmp_path, monkeypatch):
    _fake_kaleido(monkeypatch, batch_skips={"b.png"}, single_writes=False)
    fig = head_heatmap(torch.rand(2, 2))
    with pytest.raises(FigureExportError, match=r"b\.png.*wrote no file"):
        save_figures([(fig, tmp_path / "a"), (fig, tmp_path / "b")])


def test_directory_mode_puts_one_plotly_js_beside_the_pages(tmp_path):
    """What the report writers use: offline pages without 4.7 MB of plotly.js inside each."""
    fig = head_heatmap(torch.rand(2, 2))
    paths = save_figures(
        [(fig, tmp_path / "a"), (fig, tmp_path / "b")], include_plotlyjs="directory", formats=("html",)
    )
    assert [p.name for p in paths] == ["a.html", "b.html"]
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    assert re.findall(r'<script[^>]*src="([^"]+)"', paths[0].read_text()) == ["plotly.min.js"]
    with pytest.raises(ValueError, match="unknown figure format"):
        save_figures([(fig, tmp_path / "c")], formats=("jpg",))
