"""Tables of a comparison grid from its per-run CSV (no model, no raw runs needed).

``python benchmarks/label_grid_tables.py`` prints the markdown that benchmarks/RESULTS.md quotes for
the label-format grid: mean test accuracy per (method, task) over the seeds run, the 8-task
average, JoLA against each method and each method against zero-shot in sign tests over paired
(task, seed) cells. The CSV itself was written by the grid (``benchmarks/paper_grid.py``, then
``benchmarks/paper_grid_report.py OUT/main``) from the raw runs. The cloze grid, once run::

    python benchmarks/paper_grid_report.py OUT/cloze && \
        python benchmarks/label_grid_tables.py --cells OUT/cloze/cells.csv --metric acc_norm
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from scipy.stats import binomtest

CELLS = Path(__file__).parent / "results" / "label_grid" / "cells.csv"
TASKS = ["arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "piqa", "siqa", "winogrande"]
MAIN = ["zeroshot", "jola", "iti", "red", "lofit", "lora", "bitfit", "loreft", "repe"]


def accuracy_table(cells: pd.DataFrame, methods: list[str], metric: str = "accuracy") -> str:
    """Markdown: mean ``metric`` (%) per method and task over the seeds present, and the average."""
    rows = ["| method | " + " | ".join(TASKS) + " | average | seeds |", "|" + "---|" * (len(TASKS) + 3)]
    for method in methods:
        sub = cells[cells["method"] == method]
        if sub.empty:
            continue
        means = sub.groupby("task")[metric].mean().reindex(TASKS) * 100
        seeds = ",".join(str(s) for s in sorted(sub["seed"].unique()))
        cols = " | ".join("-" if pd.isna(v) else f"{v:.1f}" for v in means)
        avg = "-" if means.isna().any() else f"{means.mean():.1f}"
        rows.append(f"| {method} | {cols} | {avg} | {seeds} |")
    return "\n".join(rows)


def sign_tests(cells: pd.DataFrame, reference: str = "jola", metric: str = "accuracy") -> str:
    """Markdown: the reference against each method over paired (task, seed) cells, exact sign test."""
    ref = cells[cells["method"] == reference].set_index(["task", "seed"])[metric]
    rows = [f"| {reference} against | cells | higher | tied | lower | sign-test p |", "|---|---|---|---|---|---|"]
    for method in sorted(set(cells["method"]) - {reference}):
        other = cells[cells["method"] == method].set_index(["task", "seed"])[metric]
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
    parser.add_argument("--metric", default="accuracy", help="the column to tabulate (cloze grid: acc_norm)")
    args = parser.parse_args()
    cells = pd.read_csv(args.cells)
    if args.metric not in cells:
        raise SystemExit(f"{args.cells} has no column {args.metric!r}; choose from {sorted(cells.columns)}")
    ablations = sorted(m for m in cells["method"].unique() if m.startswith("jola_"))
    print(f"## Test {args.metric} (%)\n")
    print(accuracy_table(cells, MAIN, args.metric))
    print("\n## Ablations (%)\n")
    print(accuracy_table(cells, ["jola", *ablations], args.metric))
    print("\n## Sign tests\n")
    print(sign_tests(cells, "jola", args.metric))
    print("\n## Each method against zero-shot\n")
    print(sign_tests(cells, "zeroshot", args.metric).replace("| zeroshot against |", "| zero-shot against |"))


if __name__ == "__main__":
    main()
