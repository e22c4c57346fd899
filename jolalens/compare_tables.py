"""The tables of a ``jolalens compare`` directory, read from its runs' ``result.json`` records.

:func:`collect` lists every run (one row each, failed and not-applicable runs included),
:func:`summarise` averages over seeds, :func:`markdown_table` lays methods out against tasks in
the registry's order (:data:`jolalens.methods.METHODS`), and :func:`write_tables` rewrites
``results.csv``, ``summary.csv`` and ``summary.md``. Reading needs no model and no runner, so
reports and notebooks use this module alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .fileio import atomic_path
from .methods import METHODS
from .run_records import read_record

__all__ = [
    "RESULT_FILE",
    "collect",
    "markdown_table",
    "summarise",
    "usual_device",
    "usual_device_times",
    "write_tables",
]

RESULT_FILE = "result.json"


def collect(out: str | Path) -> pd.DataFrame:
    """Every finished run under ``out`` as one row; failed runs as ``status='failed'`` rows."""
    out = Path(out)
    rows = []
    for run_dir in sorted((out / "runs").glob("*/*/seed*")):
        task, method, seed = run_dir.parent.parent.name, run_dir.parent.name, int(run_dir.name[4:])
        row = read_record(run_dir / RESULT_FILE, ("status",))
        # damaged: listed as failed, recomputed on the next run
        if row is None and (run_dir / RESULT_FILE).is_file():
            rows.append({"task": task, "method": method, "seed": seed, "status": "failed"})
        elif row is not None:
            row["hyperparameters"] = json.dumps(row.get("hyperparameters", {}), sort_keys=True)
            row["info"] = json.dumps(row.get("info", {}), sort_keys=True)
            if "resumed_points" in row:
                row["resumed_points"] = json.dumps(row["resumed_points"])
            rows.append(row)
        elif (run_dir / "error.txt").is_file():
            rows.append({"task": task, "method": method, "seed": seed, "status": "failed"})
    return pd.DataFrame(rows)


def usual_device(results: pd.DataFrame) -> str | None:
    """The device most of the finished runs ran on (``None`` when the rows do not record one)."""
    if "device" not in results:
        return None
    devices = _finished(results)["device"].dropna()
    return None if devices.empty else str(devices.mode().iloc[0])


def _finished(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "done"] if "status" in results else results


def _resumed_elsewhere(results: pd.DataFrame) -> pd.Series:
    """Whether a run kept a search point that an earlier attempt fitted on another device."""
    if "resumed_points" not in results:
        return pd.Series(False, index=results.index)

    def elsewhere(kept: Any, device: Any) -> bool:
        if not isinstance(kept, str):
            return False
        return any(point.get("device") != device for point in json.loads(kept))

    return pd.Series(
        [elsewhere(k, d) for k, d in zip(results["resumed_points"], results["device"], strict=True)],
        index=results.index,
    )


def usual_device_times(results: pd.DataFrame) -> pd.DataFrame:
    """Wall times kept only for runs wholly on the usual device: a run moved to a slower machine,
    or one that kept a search point fitted elsewhere, would make its method's mean time
    incomparable (its score is kept)."""
    usual = usual_device(results)
    if usual is None:
        return results
    same = (results["device"] == usual) & ~_resumed_elsewhere(results)
    return results.assign(
        fit_seconds=results["fit_seconds"].where(same), eval_seconds=results["eval_seconds"].where(same)
    )


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (task, method), with parameters and wall time.

    Wall times are means over the runs on the usual device only (:func:`usual_device_times`).
    """
    if results.empty or "score" not in results:
        return pd.DataFrame(
            columns=["task", "method", "mean", "std", "n_seeds", "trainable_parameters", "fit_seconds", "eval_seconds"]
        )
    done = usual_device_times(_finished(results))
    grouped = done.groupby(["task", "method"], sort=False)
    summary = grouped.agg(
        mean=("score", "mean"),
        std=("score", "std"),
        n_seeds=("seed", "nunique"),
        trainable_parameters=("trainable_parameters", "mean"),
        fit_seconds=("fit_seconds", "mean"),
        eval_seconds=("eval_seconds", "mean"),
        val_ce=("val_ce", "mean"),
    ).reset_index()
    return summary


def markdown_table(
    summary: pd.DataFrame,
    methods_order: Sequence[str] | None = None,
    not_applicable: pd.DataFrame | None = None,
    *,
    scale: float = 100.0,
) -> str:
    """Methods as rows, tasks as columns (``mean ± std`` in %), then average, parameters, time.

    ``not_applicable``: rows (task, method) shown as ``n/a`` instead of ``–`` (not run yet).
    ``scale``: 100 for accuracies stored as fractions, 1 for BLEU / ROUGE (already in %).
    """
    if summary.empty:
        return "_no finished runs yet_\n"
    results_na = not_applicable if not_applicable is not None else pd.DataFrame(columns=["task", "method"])
    tasks = list(dict.fromkeys(summary["task"]))
    present = list(dict.fromkeys(summary["method"]))
    if methods_order:
        order = [m for m in methods_order if m in present]
    else:  # the registry's order, then methods this process has not registered (e.g. a user's own)
        order = [m for m in METHODS if m in present] + [m for m in present if m not in METHODS]
    header = "| method | " + " | ".join(tasks) + " | average | trainable params | fit s (mean) |"
    lines = [header, "|" + "---|" * (len(tasks) + 4)]
    for method in order:
        rows = summary[summary["method"] == method].set_index("task")
        cells, means = [], []
        for task in tasks:
            if task in rows.index:
                r = rows.loc[task]
                std = "" if pd.isna(r["std"]) else f" ± {scale * r['std']:.1f}"
                cells.append(f"{scale * r['mean']:.1f}{std} (n={int(r['n_seeds'])})")
                means.append(r["mean"])
            elif not results_na.empty and ((results_na["task"] == task) & (results_na["method"] == method)).any():
                cells.append("n/a")
            else:
                cells.append("–")
        avg = f"{scale * sum(means) / len(means):.1f}" if len(means) == len(tasks) else "–"
        params = int(rows["trainable_parameters"].iloc[0])
        fit = rows["fit_seconds"].mean()
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {avg} | {params:,} | {'–' if pd.isna(fit) else f'{fit:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(out: str | Path) -> pd.DataFrame:
    """Rewrite ``results.csv``, ``summary.csv`` and ``summary.md`` from the finished runs."""
    out = Path(out)
    results = collect(out)
    # a full disk leaves the previous tables, never 0-byte ones
    with atomic_path(out / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    summary = summarise(results)
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    failed = results[results["status"] == "failed"] if "status" in results else results
    note = ""
    if len(failed):
        note = (
            "\nFailed runs (see their error.txt; rerun the same command to retry): "
            + ", ".join(f"{r.task}/{r.method}/seed{r.seed}" for r in failed.itertuples())
            + "\n"
        )
    metric = results["metric"].dropna().iloc[0] if "metric" in results and results["metric"].notna().any() else "score"
    usual = usual_device(results)
    others = sorted(set(_finished(results)["device"].dropna()) - {usual}) if usual else []
    if others:
        note += (
            f"\n`fit s`: mean over the runs on {usual} only; "
            f"runs on {', '.join(others)} are left out of it (–: all were).\n"
        )
    text = (
        f"# jolalens compare: test {metric} (%), mean ± std over seeds\n\n"
        + markdown_table(
            summary,
            not_applicable=results[results["status"] == "not_applicable"] if "status" in results else None,
            scale=100.0 if metric in ("accuracy", "acc_norm") else 1.0,
        )
        + note
    )
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(text)
    return results
