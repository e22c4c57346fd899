"""Writing figures for a paper and for the web: self-contained HTML, PNG, PDF and SVG.

HTML embeds plotly.js (``include_plotlyjs=True``, ~4.7 MB) so a figure opens offline; the
static formats go through kaleido, which needs a Chromium binary (see :data:`PNG_SETUP`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from ..errors import JolaError

__all__ = ["FORMATS", "PNG_SETUP", "FigureExportError", "save_figure", "save_figures"]

PNG_SETUP = (
    "Static PNG export needs kaleido>=1 and a Chromium browser. On Debian/Ubuntu run:\n"
    "  apt-get update && apt-get install -y chromium\n"
    "  .venv/bin/pip install 'kaleido>=1.0'\n"
    "(or `make setup`). kaleido finds `chromium` on PATH; set BROWSER_PATH=/path/to/chrome "
    "to use another binary."
)
FORMATS = ("html", "png", "pdf", "svg")
_STATIC = ("png", "pdf", "svg")


class FigureExportError(JolaError, RuntimeError):
    """A figure could not be written as PNG/PDF/SVG; the message names the set-up that fixes it."""


def save_figure(
    fig: go.Figure,
    path: str | Path,
    *,
    scale: float = 2.0,
    include_plotlyjs: bool | str = True,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Write ``path.html`` (interactive, self-contained), ``.png``, ``.pdf`` and ``.svg``; returns them.

    ``path`` has no suffix (one is dropped). Pass ``include_plotlyjs="cdn"`` for small HTML that
    needs the network, or fewer ``formats``. Raises :class:`FigureExportError` naming the set-up
    when static export is unavailable (the HTML is written first either way).
    """
    return save_figures([(fig, path)], scale=scale, include_plotlyjs=include_plotlyjs, formats=formats)


def save_figures(
    items: Sequence[tuple[go.Figure, str | Path]],
    *,
    scale: float = 2.0,
    include_plotlyjs: bool | str = True,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """:func:`save_figure` for many figures, sharing one browser per static format (much faster).

    Every static file is checked afterwards: one the shared render dropped is rendered again
    alone, and one that still cannot be written raises :class:`FigureExportError` naming it.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown figure format(s) {unknown}; choose from {FORMATS}")
    stems = []
    for _, path in items:
        path = Path(path)
        if path.suffix.lstrip(".") in FORMATS:
            path = path.with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        stems.append(path)
    written: dict[Path, list[Path]] = {stem: [] for stem in stems}
    if "html" in formats:
        for (fig, _), stem in zip(items, stems, strict=True):
            html = stem.with_suffix(".html")
            # a fixed element id (plotly draws a random one): the same figure gives the same bytes
            fig.write_html(html, include_plotlyjs=include_plotlyjs, full_html=True, div_id=f"jolalens-{stem.name}")
            written[stem].append(html)
    static = [f for f in formats if f in _STATIC]
    if items and static:
        try:
            import kaleido  # noqa: F401
        except ImportError as exc:
            first = stems[0].with_suffix("." + static[0])
            raise FigureExportError(f"Cannot write {first}: kaleido is not installed.\n{PNG_SETUP}") from exc
        for fmt in static:
            paths = [stem.with_suffix("." + fmt) for stem in stems]
            _write_static([fig for fig, _ in items], paths, fmt, scale)
            for stem, path in zip(stems, paths, strict=True):
                written[stem].append(path)
    return [p for stem in stems for p in written[stem]]


def _write_static(figs: list[go.Figure], paths: list[Path], fmt: str, scale: float) -> None:
    import plotly.io as pio

    stamps = {path: _stamp(path) for path in paths}
    try:
        pio.write_images(figs, paths, format=fmt, scale=scale)
    except Exception as exc:  # kaleido/choreographer raise assorted types when Chrome is missing
        raise _export_error(paths[0], exc) from exc
    # kaleido's batch call returns a figure's render error instead of raising it, after deleting
    # that figure's old file (seen once: a render that timed out on a loaded 2-core machine).
    # Redo each file the batch did not write, one at a time, where an error does raise.
    for fig, path in zip(figs, paths, strict=True):
        if _stamp(path) is None or _stamp(path) == stamps[path]:
            try:
                pio.write_image(fig, path, format=fmt, scale=scale)
            except Exception as exc:
                raise _export_error(path, exc) from exc
            if _stamp(path) is None:
                raise FigureExportError(
                    f"Cannot write {path}: kaleido reported success but wrote no file.\n{PNG_SETUP}"
                )


def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's (size, mtime in ns), or ``None`` when it is missing or empty."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if stat.st_size else None


def _export_error(path: Path, exc: Exception) -> FigureExportError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return FigureExportError(f"Cannot write {path}: {type(exc).__name__}: {first}\n{PNG_SETUP}")
