"""Figures and tables of a ``jolalens compare`` directory, for one task and seed.

Writes the test-score bar chart (zero-shot as the reference line), the head-level methods' maps
side by side (JoLA's effective edit, ITI's probe accuracy, LoFiT's heads), the Jaccard matrix of
their top-K head sets (K = LoFiT's K), and, with ``scores``, JoLA's ranking against an
ablation or attribution head-score map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..compare_tables import collect, summarise
from ..edit import load_edit
from .ablation import HeadScores
from .compare import compare_selection, jaccard_matrix, layer_distribution, top_k
from .figures import method_bar, save_figures, side_by_side, similarity_matrix

__all__ = ["MAP_RANGES", "head_level_maps", "make_compare_figures"]

# fixed colour ranges of the head-level maps: a balanced probe's chance is 0.5; LoFiT's map is 0/1
MAP_RANGES = {"ITI probe accuracy": (0.5, 1.0), "LoFiT heads": (0.0, 1.0)}


def head_level_maps(compare_dir: str | Path, task: str, model: nn.Module, seed: int = 0) -> dict[str, Tensor]:
    """``[layer, head]`` maps of the head-level methods present: JoLA ``|g_a a| + |g_m m|``,
    ITI probe accuracy, LoFiT's selected heads (1) and others (0)."""
    runs = Path(compare_dir) / "runs" / task
    maps: dict[str, Tensor] = {}
    edit_dir = lambda method: runs / method / f"seed{seed}" / "edit"  # noqa: E731
    if (edit_dir("jola") / "jola_config.json").is_file():
        jola: Any = load_edit(edit_dir("jola"), model)  # a JolaEdit (the method is in its config)
        m = jola.head_maps()
        maps["JoLA |edit|"] = (
            m["gate_additive"] * m["norm_additive"] + m["gate_multiplicative"] * m["norm_multiplicative"]
        )
    if (edit_dir("iti") / "jola_config.json").is_file():
        iti: Any = load_edit(edit_dir("iti"), model)
        maps["ITI probe accuracy"] = iti.probe_accuracy.detach().cpu()
    if (edit_dir("lofit") / "jola_config.json").is_file():
        lofit: Any = load_edit(edit_dir("lofit"), model)
        chosen = torch.zeros(lofit.dims.n_layers, lofit.dims.n_heads)
        for layer, head in lofit.config.heads or ():
            chosen[layer, head] = 1.0
        maps["LoFiT heads"] = chosen
    return maps


def make_compare_figures(
    compare_dir: str | Path,
    task: str,
    out_dir: str | Path,
    *,
    model: nn.Module,
    seed: int = 0,
    scores: HeadScores | None = None,
) -> list[Path]:
    """Write the comparison's figures (HTML + PNG) and tables (CSV) for ``task`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(collect(compare_dir))
    summary = summary[summary["task"] == task]
    if summary.empty:
        raise FileNotFoundError(f"{compare_dir} has no finished runs for task {task!r}")
    pending = []
    written: list[Path] = []
    zero = summary.loc[summary["method"] == "zeroshot", "mean"]
    pending.append(
        (
            method_bar(
                summary.rename(columns={"mean": "test score"}),
                x="method",
                y="test score",
                error="std" if summary["std"].notna().any() else None,
                title=f"{task}: test score per method (mean over seeds)",
                reference=float(zero.iloc[0]) if len(zero) else None,
                reference_label="zero-shot",
            ),
            out_dir / f"{task}_test_accuracy",
        )
    )
    maps = head_level_maps(compare_dir, task, model, seed)
    if maps:
        pending.append(
            (
                side_by_side(
                    maps,
                    title=f"{task}: where the head-level methods edit",
                    ranges={k: v for k, v in MAP_RANGES.items() if k in maps},
                ),
                out_dir / f"{task}_head_maps",
            )
        )
    lofit_map = maps.get("LoFiT heads")
    k = (
        int(lofit_map.sum())
        if lofit_map is not None
        else max(1, round(0.03 * next(iter(maps.values())).numel()))
        if maps
        else 0
    )
    if len(maps) >= 2 and k:
        selections = {name.split()[0]: top_k(m, k) for name, m in maps.items()}
        matrix = jaccard_matrix(selections)
        matrix.to_csv(out_dir / f"{task}_head_jaccard.csv")
        written.append(out_dir / f"{task}_head_jaccard.csv")
        pending.append(
            (similarity_matrix(matrix, title=f"{task}: top-{k} head sets, Jaccard"), out_dir / f"{task}_head_jaccard")
        )
        n_layers, n_heads = next(iter(maps.values())).shape
        layers = pd.DataFrame(
            {name: layer_distribution(sel, n_layers, n_heads)["n_selected"] for name, sel in selections.items()}
        )
        layers.index.name = "layer"
        layers.to_csv(out_dir / f"{task}_head_layers.csv")
        written.append(out_dir / f"{task}_head_layers.csv")
    if scores is not None and "JoLA |edit|" in maps and k:
        rows = []
        for name, m in maps.items():
            if name == "LoFiT heads":
                continue
            # rank scores with ties broken by head index (as top_k does): the selection is exactly the top k
            order = torch.sort(-m.flatten(), stable=True).indices
            ranks = torch.empty(m.numel())
            ranks[order] = torch.arange(m.numel(), 0, -1, dtype=torch.float32)
            row = compare_selection(ranks.view_as(m), scores.logprob_drop, threshold=float(m.numel() - k), k=k)
            row.insert(0, "method", name)
            rows.append(row)
        table = pd.concat(rows, ignore_index=True)
        table.to_csv(out_dir / f"{task}_vs_{scores.method}_{scores.ablation}.csv", index=False)
        written.append(out_dir / f"{task}_vs_{scores.method}_{scores.ablation}.csv")
        pending.append(
            (
                side_by_side(
                    {"JoLA |edit|": maps["JoLA |edit|"], f"{scores.method} ({scores.ablation})": scores.logprob_drop},
                    title=f"{task}: JoLA beside {scores.method} head scores",
                ),
                out_dir / f"{task}_jola_vs_{scores.method}",
            )
        )
    # one plotly.min.js beside the pages (offline) instead of 4.7 MB inside each of them
    written.extend(save_figures(pending, include_plotlyjs="directory"))
    return written
