"""Figures and tables of one saved JoLA run directory (what ``jolalens figures`` makes).

Run-directory layout read here (written by the trainer; only ``edit/`` or ``head_maps.pt`` is
required)::

    run_dir/
      edit/              edit.save(run_dir / "edit")  (jola_config.json, jola_weights.safetensors)
      head_maps.pt       optional: torch.save(edit.head_maps(), ...); lets figures skip the model
      history.csv        optional: result.history.to_csv(..., index=False)
      gate_history.pt    optional: torch.save(result.gate_history, ...)  (list of head_maps dicts)
      ablation/*.pt      optional: HeadScores.save(...) files, e.g. ablation/mean.pt
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..errors import EditLoadError
from .ablation import HeadScores
from .compare import (
    compare_methods,
    compare_selection,
    head_set,
    jaccard_matrix,
    layer_distribution,
)
from .figures import (
    gate_dynamics,
    gate_heatmap,
    head_heatmap,
    method_bar,
    save_figure,
    save_figures,
    side_by_side,
    similarity_matrix,
    training_curves,
)

__all__ = [
    "EDIT_DIR",
    "GATE_HISTORY_FILE",
    "HEAD_MAPS_FILE",
    "HISTORY_FILE",
    "ABLATION_DIR",
    "head_maps_from_run",
    "make_figures",
    "make_similarity_figure",
]

EDIT_DIR = "edit"
HEAD_MAPS_FILE = "head_maps.pt"
HISTORY_FILE = "history.csv"
GATE_HISTORY_FILE = "gate_history.pt"
ABLATION_DIR = "ablation"
_KINDS = ("additive", "multiplicative")


def _load_model_for_edit(edit_dir: Path) -> nn.Module:
    import json

    from ..edit import CONFIG_FILE
    from ..models import EMBEDDED_MODELS, load_model

    meta: dict[str, Any] = json.loads((edit_dir / CONFIG_FILE).read_text())
    name = str((meta.get("model") or {}).get("model_name", ""))
    if not name or name == "unknown":
        raise EditLoadError(f"{edit_dir} does not name its model; pass model=... to make_figures")
    for key, spec in EMBEDDED_MODELS.items():
        if name.lower() in {key, spec.hf_name.lower()}:
            return load_model(key)
    return load_model(name)


def head_maps_from_run(run_dir: str | Path, model: nn.Module | None = None) -> dict[str, Tensor]:
    """The final ``edit.head_maps()`` of a run: from ``head_maps.pt``, else by loading ``edit/``.

    Loading the edit needs its model: ``model`` if given, else the one named in the edit's
    config (embedded models load offline).
    """
    run_dir = Path(run_dir)
    cached = run_dir / HEAD_MAPS_FILE
    if cached.is_file():
        return dict(torch.load(cached, weights_only=True))
    edit_dir = run_dir / EDIT_DIR
    if not edit_dir.is_dir():
        raise EditLoadError(
            f"{run_dir} is not a JoLA run directory: it has neither {HEAD_MAPS_FILE} nor {EDIT_DIR}/ "
            "(save the edit with edit.save(run_dir / 'edit'))"
        )
    from ..jola import JolaEdit  # lazy: analysis does not depend on the trainer at import

    model = model if model is not None else _load_model_for_edit(edit_dir)
    return dict(JolaEdit.load(edit_dir, model).head_maps())


def _present_kinds(maps: Mapping[str, Tensor]) -> list[str]:
    """Edit types the run has: an absent type's maps are all zero."""
    return [
        k
        for k in _KINDS
        if f"gate_{k}" in maps and (bool(maps[f"norm_{k}"].abs().sum() > 0) or bool(maps[f"gate_{k}"].sum() > 0))
    ]


def make_figures(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    model: nn.Module | None = None,
    command: str | None = None,
) -> list[Path]:
    """Write every figure (HTML + PNG) and table (CSV) a run directory supports; returns the paths.

    Always: gate, P(open) and edit-norm heatmaps per edit type present. With ``history.csv``:
    training curves. With ``gate_history.pt``: gate dynamics. With ``ablation/*.pt``: JoLA beside
    each ablation map, the agreement table and a method-comparison bar chart. With ``command``,
    ``out_dir/README.md`` is (re)written naming the command and each file: rewritten, never
    appended to, so running the same command twice leaves the same file.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = head_maps_from_run(run_dir, model)
    kinds = _present_kinds(maps)
    written: list[Path] = []
    described: list[tuple[str, str]] = []
    pending: list[tuple[Any, Path]] = []

    def save(fig: Any, stem: str, what: str) -> None:
        pending.append((fig, out_dir / stem))
        described.append((stem, what))

    for kind in kinds:
        save(
            gate_heatmap(maps[f"gate_{kind}"], title=f"JoLA {kind} gate at evaluation", colorbar_title="gate value"),
            f"gates_{kind}",
            f"{kind} gate value per head (0 = head not edited)",
        )
        save(
            gate_heatmap(maps[f"p_open_{kind}"], title=f"JoLA P(gate open), {kind}", colorbar_title="P(gate open)"),
            f"p_open_{kind}",
            f"probability that the {kind} gate is non-zero",
        )
        save(
            head_heatmap(maps[f"norm_{kind}"], title=f"JoLA {kind} edit-vector norm", colorbar_title="L2 norm"),
            f"norm_{kind}",
            f"L2 norm of the {kind} edit vector per head",
        )
        layer_distribution(head_set(maps[f"gate_{kind}"]), *maps[f"gate_{kind}"].shape).to_csv(
            out_dir / f"layer_distribution_{kind}.csv", index=False
        )
        written.append(out_dir / f"layer_distribution_{kind}.csv")

    history_path = run_dir / HISTORY_FILE
    if history_path.is_file():
        save(training_curves(pd.read_csv(history_path)), "training_curves", "losses and open-gate fractions per epoch")
    gate_history_path = run_dir / GATE_HISTORY_FILE
    if gate_history_path.is_file():
        gate_history = torch.load(gate_history_path, weights_only=True)
        for kind in kinds:
            save(
                gate_dynamics(gate_history, key=f"gate_{kind}", title=f"{kind} gates over training"),
                f"gate_dynamics_{kind}",
                f"{kind} gate value of the most-open heads per epoch",
            )

    ablation_files = sorted((run_dir / ABLATION_DIR).glob("*.pt")) if (run_dir / ABLATION_DIR).is_dir() else []
    tables = []
    for path in ablation_files:
        scores = HeadScores.load(path)
        name = f"{scores.method} ({scores.ablation})"
        jola_maps = {f"JoLA {k} gate": maps[f"gate_{k}"] for k in kinds}
        save(
            side_by_side(
                {**jola_maps, f"{name}: log-prob drop": scores.logprob_drop},
                title=f"JoLA vs {name}",
                ranges=dict.fromkeys(jola_maps, (0.0, 1.0)),
            ),
            f"jola_vs_{path.stem}",
            f"JoLA gates beside the {name} head scores",
        )
        for kind in kinds:
            n_open = int((maps[f"gate_{kind}"] > 0).sum())
            if not 0 < n_open < maps[f"gate_{kind}"].numel():  # no contrast: every head or none is edited
                continue
            row = compare_selection(maps[f"gate_{kind}"], scores.logprob_drop)
            row.insert(0, "jola", kind)
            row.insert(0, "scores", path.stem)
            tables.append(row)
            methods = {f"JoLA gate ({kind})": maps[f"gate_{kind}"], f"JoLA norm ({kind})": maps[f"norm_{kind}"]}
            k = int(row["k"].iloc[0])
            bars = compare_methods(methods, scores.logprob_drop, k)
            save(
                method_bar(
                    bars,
                    y="overlap_at_k",
                    title=f"overlap@{k} with {name}",
                    reference=float(row["expected_overlap"].iloc[0]) / k,
                ),
                f"methods_vs_{path.stem}_{kind}",
                f"overlap@k of JoLA's {kind} rankings with the {name} top-k",
            )
    if tables:
        pd.concat(tables, ignore_index=True).to_csv(out_dir / "agreement.csv", index=False)
        written.append(out_dir / "agreement.csv")
    # one plotly.min.js beside the pages (offline) instead of 4.7 MB inside each of them
    written.extend(save_figures(pending, include_plotlyjs="directory"))

    if command:
        lines = [f"\n## {run_dir.name}\n", f"Made by `{command}` from `{run_dir}`:\n"]
        lines += [f"- `{stem}.png` / `{stem}.html`: {what}" for stem, what in described]
        (out_dir / "README.md").write_text("\n".join(lines).lstrip("\n") + "\n", encoding="utf-8")
    return written


def make_similarity_figure(
    run_dirs: Mapping[str, str | Path],
    out_dir: str | Path,
    *,
    kind: str = "additive",
    stem: str = "selection_similarity",
    title: str = "",
) -> tuple[pd.DataFrame, list[Path]]:
    """Jaccard matrix of the heads JoLA opens across runs (seeds or tasks), as CSV and figure."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    selections = {name: head_set(head_maps_from_run(path)[f"gate_{kind}"]) for name, path in run_dirs.items()}
    matrix = jaccard_matrix(selections)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix.to_csv(out_dir / f"{stem}.csv")
    paths = save_figure(
        similarity_matrix(matrix, title=title or f"Jaccard of JoLA's open {kind} heads"), out_dir / stem
    )
    return matrix, [out_dir / f"{stem}.csv", *paths]
