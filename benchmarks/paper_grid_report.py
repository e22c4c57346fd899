"""The tidy per-run table of a rerun grid: one row per finished run of a compare directory.

``benchmarks/paper_grid.py`` writes each group of the grid as a ``jolalens compare`` directory
(``GROUP/runs/{task}/{method}/seed{seed}`` with ``result.json``, ``test_items.csv[.gz]`` and
``search.csv``). This script reads one such directory and writes ``cells.csv`` with the columns
of the committed ``benchmarks/results/label_grid/cells.csv``, which ``label_grid_tables.py``
turns into the tables of ``benchmarks/RESULTS.md``. No model, no GPU::

    python benchmarks/paper_grid_report.py GRID/main                 # writes GRID/main/cells.csv
    python benchmarks/paper_grid_report.py GRID/main --out benchmarks/results/label_grid/cells.csv

Per run: test accuracy, the *label-prior* accuracy (what an item-blind guesser with the run's
own answer frequencies scores, :func:`jolalens.analysis.stats.label_prior_accuracy`), the most
frequent answer and its share, the run's record (validation CE, fit time, device, kept
hyper-parameters, JoLA's closed-gate fractions and best epoch), how far the kept search point's
validation CE is below the runner-up's, and against zero-shot (seed 0) on the same test items:
the difference, the exact McNemar p-value (:func:`jolalens.analysis.paired.mcnemar_exact`) and
the number of changed answers. Everything statistical is jolalens.analysis'. The dated
narrative report this script used to write (and the other CSVs of ``results/label_grid``:
``repeat_cells.csv``, ``jola_head_pairs.csv``, ``jola_open_heads_vs_attribution.csv``) is in
the git history.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from jolalens.analysis.paired import mcnemar_exact
from jolalens.analysis.stats import label_prior_accuracy, length_prior_accuracy, majority_label_share
from jolalens.compare import cell_dir, collect

__all__ = [
    "CLOZE_COLUMNS",
    "COLUMNS",
    "cell_row",
    "cloze_columns",
    "cell_table",
    "changed_answers",
    "main",
    "read_items",
    "same_items",
    "search_margin",
]

# cloze runs (their items have ``correct_norm``) add these, before ``excess_over_label_prior``
CLOZE_COLUMNS = [
    "acc_norm",
    "minus_zeroshot_norm",
    "mcnemar_p_norm",
    "position_prior_norm",
    "longest_option_accuracy",
    "shortest_option_accuracy",
]

# the committed benchmarks/results/label_grid/cells.csv, in its order
COLUMNS = [
    "task",
    "method",
    "seed",
    "accuracy",
    "n_test",
    "label_prior_accuracy",
    "top_label",
    "top_label_share",
    "val_ce",
    "fit_seconds",
    "device",
    "hyperparameters",
    "search_margin",
    "minus_zeroshot",
    "mcnemar_p",
    "changed_vs_zeroshot",
    "best_epoch",
    "closed_additive",
    "closed_multiplicative",
    "excess_over_label_prior",
]


def read_items(run: Path, name: str = "test_items") -> pd.DataFrame | None:
    """A run's per-item results (``.csv.gz`` as the grid stores them, or ``.csv``), if any."""
    for path in (run / f"{name}.csv.gz", run / f"{name}.csv"):
        if path.is_file():
            return pd.read_csv(path)
    return None


def search_margin(run: Path) -> float:
    """How far the kept search point's validation CE is below the runner-up's (NaN: one point)."""
    path = run / "search.csv"
    if not path.is_file():
        return float("nan")
    losses = sorted(pd.read_csv(path)["val_ce"].dropna())
    return float(losses[1] - losses[0]) if len(losses) > 1 else float("nan")


def same_items(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two per-item results cover the same test items in the same order."""
    return len(a) == len(b) and bool((a["item"].to_numpy() == b["item"].to_numpy()).all())


def changed_answers(a: pd.DataFrame, b: pd.DataFrame) -> int:
    """On how many of the same test items two runs predict different answers."""
    if not same_items(a, b):
        raise ValueError("the two runs cover different test items; their answers cannot be compared")
    return int((a["prediction"].astype(str).to_numpy() != b["prediction"].astype(str).to_numpy()).sum())


def _text(value: Any, default: str) -> str:
    """A JSON column of :func:`jolalens.compare.collect` (NaN where a record lacks it)."""
    return value if isinstance(value, str) else default


def _hyperparameters(record: dict[str, Any], run: Path) -> str:
    """The kept point as JSON in the order the method's search space writes it (``collect`` sorts keys)."""
    try:
        return json.dumps(json.loads((run / "result.json").read_text())["hyperparameters"])
    except (OSError, KeyError, ValueError):
        return _text(record.get("hyperparameters"), "{}")


def _correct(items: pd.DataFrame) -> list[bool]:
    return items["correct"].astype(bool).tolist()


def _positions(items: pd.DataFrame, column: str) -> tuple[list[list[str]], list[int]]:
    """Each item's options and the index of ``column`` (the gold answer, a prediction) among them."""
    choices = [list(ast.literal_eval(c)) if isinstance(c, str) else list(c) for c in items["choices"]]
    return choices, [opts.index(v) for opts, v in zip(choices, items[column].astype(str), strict=True)]


def cloze_columns(items: pd.DataFrame, zero: pd.DataFrame | None) -> dict[str, Any]:
    """``acc_norm`` (the cloze headline) and its controls: the test against zero-shot on it, a guesser
    with the run's own distribution of predicted option *positions*, and always picking the
    longest or shortest option (characters): is an effect content, or position or length?"""
    norm = items["correct_norm"].astype(bool).tolist()
    choices, gold = _positions(items, "answer")
    _, predicted = _positions(items, "prediction_norm")
    row: dict[str, Any] = {
        "acc_norm": sum(norm) / len(norm),
        "position_prior_norm": label_prior_accuracy(predicted, gold),
        "longest_option_accuracy": length_prior_accuracy(choices, gold, pick="longest"),
        "shortest_option_accuracy": length_prior_accuracy(choices, gold, pick="shortest"),
    }
    if zero is not None and "correct_norm" in zero and same_items(items, zero):
        zero_norm = zero["correct_norm"].astype(bool).tolist()
        row["minus_zeroshot_norm"] = row["acc_norm"] - sum(zero_norm) / len(zero_norm)
        row["mcnemar_p_norm"] = mcnemar_exact(norm, zero_norm).p_value
    return row


def cell_row(record: dict[str, Any], run: Path, items: pd.DataFrame, zero: pd.DataFrame | None) -> dict[str, Any]:
    """One run's row: ``record`` as :func:`jolalens.compare.collect` reads ``result.json``."""
    correct = _correct(items)
    top_label, top_share = majority_label_share(items["prediction"].tolist())
    row: dict[str, Any] = {
        "task": record["task"],
        "method": record["method"],
        "seed": int(record["seed"]),
        "accuracy": sum(correct) / len(correct),
        "n_test": len(items),
        "label_prior_accuracy": label_prior_accuracy(items["prediction"].tolist(), items["answer"].tolist()),
        "top_label": top_label,
        "top_label_share": top_share,
        "val_ce": record.get("val_ce"),
        "fit_seconds": record.get("fit_seconds"),
        "device": record.get("device", "cpu"),
        "hyperparameters": _hyperparameters(record, run),
        "search_margin": search_margin(run),
    }
    if zero is not None and same_items(items, zero):
        zero_correct = _correct(zero)
        row["minus_zeroshot"] = row["accuracy"] - sum(zero_correct) / len(zero_correct)
        row["mcnemar_p"] = mcnemar_exact(correct, zero_correct).p_value
        row["changed_vs_zeroshot"] = changed_answers(items, zero)
    info = json.loads(_text(record.get("info"), "{}"))
    if "best_epoch" in info:
        row["best_epoch"] = info["best_epoch"]
    for kind, frac in (info.get("closed_fraction") or {}).items():
        row[f"closed_{kind}"] = frac
    if "correct_norm" in items:
        row.update(cloze_columns(items, zero))
    row["excess_over_label_prior"] = row["accuracy"] - row["label_prior_accuracy"]
    return row


def cell_table(compare_dir: str | Path) -> pd.DataFrame:
    """One row per finished run of a compare directory with per-item results, in ``COLUMNS`` order.

    Runs without ``test_items`` (and failed or not-applicable ones) are left out; zero-shot's seed-0
    run of the same task is the reference of the test against zero-shot.
    """
    compare_dir = Path(compare_dir)
    records = collect(compare_dir)
    if records.empty or "status" not in records:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    zeros: dict[str, pd.DataFrame | None] = {}
    for record in records[records["status"] == "done"].to_dict("records"):
        run = cell_dir(compare_dir, record["task"], record["method"], int(record["seed"]))
        items = read_items(run)
        if items is None or items.empty:
            continue
        if record["task"] not in zeros:
            zeros[record["task"]] = read_items(cell_dir(compare_dir, record["task"], "zeroshot", 0))
        rows.append(cell_row(record, run, items, zeros[record["task"]]))
    cells = pd.DataFrame(rows)
    extra = [c for c in cells.columns if c not in COLUMNS]  # other gate kinds, the cloze columns
    cells = cells.reindex(columns=COLUMNS[:-1] + extra + COLUMNS[-1:])
    return cells.sort_values(["task", "method", "seed"], kind="stable").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("compare_dir", type=Path, help="a compare directory of the grid (GROUP, with runs/)")
    parser.add_argument("--out", type=Path, default=None, help="the CSV to write (default: COMPARE_DIR/cells.csv)")
    args = parser.parse_args(argv)
    if not (args.compare_dir / "runs").is_dir():
        print(f"{args.compare_dir} has no runs/: not a compare directory", file=sys.stderr)
        return 2
    cells = cell_table(args.compare_dir)
    out = args.out or args.compare_dir / "cells.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    cells.to_csv(out, index=False)
    print(f"{out}: {len(cells)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
