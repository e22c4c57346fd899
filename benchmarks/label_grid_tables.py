"""Tables of the label-format grid from its committed per-run CSV (no model, no raw runs needed).

``python benchmarks/label_grid_tables.py`` prints the markdown that benchmarks/RESULTS.md quotes:
mean test accuracy per (method, task) over the seeds run, the 8-task average, and JoLA against
each method in a sign test over paired (task, seed) cells. The CSV itself was written by the grid
(``benchmarks/paper_grid.py``, then ``benchmarks/paper_grid_report.py OUT/main``) from the raw runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from scipy.stats import binomtest

CELLS = Path(__file__).parent / "results" / "label_grid" / "cells.csv"
TASKS = ["arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "piqa", "siqa", "winogrande"]
MAIN = ["zeroshot", "jola", "iti", "red", "lofit", "lora", "bitfit"]


def accuracy_table(cells: pd.DataFrame, methods: list[str]) -> str:
    """Markdown: mean accuracy (%) per method and task over the seeds present, and the average."""
    rows = ["| method | " + " | ".join(TASKS) + " | average | seeds |", "|" + "---|" * (len(TASKS) + 3)]
    for method in methods:
        sub = cells[cells["method"] == method]
        if sub.empty:
            continue
        means = sub.groupby("task")["accuracy"].mean().reindex(TASKS) * 100
        seeds = ",".join(str(s) for s in sorted(sub["seed"].unique()))
        cols = " | ".join("-" if pd.isna(v) else f"{v:.1f}" for v in means)
        avg = "-" if means.isna().any() else f"{means.mean():.1f}"
        rows.append(f"| {method} | {cols} | {avg} | {seeds} |")
    return "\n".join(rows)


def sign_tests(cells: pd.DataFrame, reference: str = "jola") -> str:
    """Markdown: the reference against each method over paired (task, seed) cells, exact sign test."""
    ref = cells[cells["method"] == reference].set_index(["task", "seed"])["accuracy"]
    rows = [f"| {reference} against | cells | higher | tied | lower | sign-test p |", "|---|---|---|---|---|---|"]
    for method in sorted(set(cells["method"]) - {reference}):
        other = cells[cells["method"] == method].set_index(["task", "seed"])["accuracy"]
        if method == "zeroshot":  # zero-shot has one run per task: pair it with every seed
            other = (
                ref.reset_index()
                .merge(other.reset_index(level="seed", drop=True).rename("o"), left_on="task", right_index=True)
                .set_index(["task", "seed"])["o"]
            )
        both = pd.concat([ref, other], axis=1, join="inner").dropna()
        diff = both.iloc[:, 0] - both.iloc[:, 1]
        hi, lo = int((diff > 1e-12).sum()), int((diff < -1e-12).sum())
        tie = len(diff) - hi - lo
        p = binomtest(hi, hi + lo, 0.5).pvalue if hi + lo else 1.0
        rows.append(f"| {method} | {len(diff)} | {hi} | {tie} | {lo} | {p:.3g} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=Path, default=CELLS)
    args = parser.parse_args()
    cells = pd.read_csv(args.cells)
    ablations = sorted(m for m in cells["method"].unique() if m.startswith("jola_"))
    print("## Test accuracy (%), label format\n")
    print(accuracy_table(cells, MAIN))
    print("\n## Ablations (%)\n")
    print(accuracy_table(cells, ["jola", *ablations]))
    print("\n## Sign tests\n")
    print(sign_tests(cells))


if __name__ == "__main__":
    main()
