"""Tables and figures of the #7 grid from its committed results (no training, no GPU).

Reads ``benchmarks/results/paper_grid`` (written by ``paper_grid.py``) and writes
``benchmarks/results/paper_grid/report.md`` + ``report_cells.csv`` and ``figures/paper_grid/``:

* the main table (test accuracy per task and method, average, parameters, fit time);
* every method against zero-shot on the same test items: the difference, an exact McNemar
  p-value, and the *label-prior* accuracy, i.e. what a guesser that picks labels with the
  method's own label frequencies, independently of the item, would score on these items
  (``sum_l P(pred = l) P(answer = l)``). Accuracy far above it means item-specific skill;
  accuracy near it means the method only moved the label prior;
* JoLA's closed-gate fractions and best epochs per task;
* run to run: the main table's cells repeated with the same seed on the same kind of GPU
  (``repeat/``): how many predictions change, and for JoLA, how many of the open heads stay;
* the generation-protocol scores of the main table's edits (``gen_result.json``), and the tables
  of the other groups (NLU, NLG, data size) as far as they have run;
* figures: accuracy minus zero-shot (task x method) and, per task, the comparison figures of
  ``jolalens.analysis.make_compare_figures`` (bars, where the head-level methods edit, head-set
  Jaccard). Usage::

    python benchmarks/paper_grid_report.py            # loads the embedded model for head maps
    python benchmarks/paper_grid_report.py --no-figures
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from jolalens.analysis.stats import (
    label_prior_accuracy,
    mcnemar_exact_p,
    paired_bootstrap,
    paired_mcnemar_p,
    sign_test_p,
)
from jolalens.compare import collect, markdown_table, summarise

sys.path.insert(0, str(Path(__file__).parent))
from paper_grid import COMMONSENSE, DATASIZE_METHODS, DATASIZE_TASKS, DATASIZES, GEM, MMLU  # noqa: E402  (the grid's own definitions)

OUT = Path(__file__).parent / "results" / "paper_grid"
FIGURES = Path(__file__).parents[1] / "figures" / "paper_grid"
ORDER = (
    "zeroshot",
    "jola",
    "iti",
    "red",
    "lofit",
    "lora",
    "bitfit",
    "jola_additive",
    "jola_multiplicative",
    "jola_shared_gate",
    "jola_no_gate",
)


def read_items(run: Path, name: str = "test_items") -> pd.DataFrame | None:
    """A run's per-item results (``.csv.gz`` as the grid stores them, or ``.csv``), if any."""
    for path in (run / f"{name}.csv.gz", run / f"{name}.csv"):
        if path.is_file():
            return pd.read_csv(path)
    return None


NEAR_TIE = 1e-3  # validation CE; the repeat flipped JoLA's PIQA choice on a gap of 2e-4


def search_margin(run: Path) -> float:
    """How far the kept search point's validation CE is below the runner-up's (NaN: one point)."""
    path = run / "search.csv"
    if not path.is_file():
        return float("nan")
    losses = sorted(pd.read_csv(path)["val_ce"].dropna())
    return float(losses[1] - losses[0]) if len(losses) > 1 else float("nan")


def _near_tie_section(cells: pd.DataFrame) -> list[str]:
    """The runs whose hyper-parameter choice hung on a validation-loss gap smaller than noise."""
    searched = cells[cells["search_margin"].notna()]
    ties = searched[searched["search_margin"] < NEAR_TIE].sort_values("search_margin")
    if searched.empty:
        return []
    lines = [
        "",
        "## Near ties in the hyper-parameter search",
        "",
        f"{len(ties)} of {len(searched)} searched runs kept a point whose validation cross-entropy was less than "
        f"{NEAR_TIE:g} below the other's. Run-to-run noise alone flipped such a choice once (JoLA on PIQA, "
        "`repeat/`), so in these runs the kept point, and for JoLA the heads it reports, is arbitrary.",
    ]
    if len(ties):
        lines += ["", "| task | method | seed | validation CE gap | kept |", "|---|---|---|---|---|"]
        lines += [
            f"| {r.task} | {r.method} | {r.seed} | {r.search_margin:.1e} | {r.hyperparameters} |"
            for r in ties.itertuples()
        ]
    return lines


def same_items(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two per-item results cover the same test items in the same order."""
    return len(a) == len(b) and bool((a["item"].to_numpy() == b["item"].to_numpy()).all())


def items_p(a: pd.DataFrame | None, b: pd.DataFrame | None) -> float:
    """Exact McNemar p between two per-item results; NaN unless both cover the same items."""
    if a is None or b is None or not same_items(a, b):
        return float("nan")
    return paired_mcnemar_p(a["correct"].astype(bool).to_numpy(), b["correct"].astype(bool).to_numpy())


def changed_answers(a: pd.DataFrame, b: pd.DataFrame) -> int:
    """On how many of the same test items two runs predict different answers."""
    if not same_items(a, b):
        raise ValueError("the two runs cover different test items; their answers cannot be compared")
    return int((a["prediction"].astype(str).to_numpy() != b["prediction"].astype(str).to_numpy()).sum())


def cell_table(out: Path, group: str = "main") -> pd.DataFrame:
    """One row per finished run: accuracy, label-prior accuracy, and the test against zero-shot."""
    rows = []
    runs = out / group / "runs"
    for task_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        zero = read_items(task_dir / "zeroshot" / "seed0")
        for run in sorted(task_dir.glob("*/seed*")):
            items = read_items(run)
            if not (run / "result.json").is_file() or items is None:
                continue
            result = json.loads((run / "result.json").read_text())
            shares = items["prediction"].astype(str).value_counts(normalize=True)
            row = {
                "task": task_dir.name,
                "method": run.parent.name,
                "seed": int(run.name[4:]),
                "accuracy": float(items["correct"].mean()),
                "n_test": len(items),
                "label_prior_accuracy": label_prior_accuracy(items["prediction"], items["answer"]),
                "top_label": str(shares.index[0]),
                "top_label_share": float(shares.iloc[0]),
                "val_ce": result.get("val_ce"),
                "fit_seconds": result.get("fit_seconds"),
                "device": result.get("device", "cpu"),
                "hyperparameters": json.dumps(result.get("hyperparameters", {})),
                "search_margin": search_margin(run),
            }
            p_zero = items_p(items, zero)
            if pd.notna(p_zero):
                row["minus_zeroshot"] = row["accuracy"] - float(zero["correct"].astype(bool).mean())
                row["mcnemar_p"] = p_zero
                row["changed_vs_zeroshot"] = changed_answers(items, zero)
            info = result.get("info", {})
            for kind, frac in info.get("closed_fraction", {}).items():
                row[f"closed_{kind}"] = frac
            if "best_epoch" in info:
                row["best_epoch"] = info["best_epoch"]
            rows.append(row)
    cells = pd.DataFrame(rows)
    cells["excess_over_label_prior"] = cells["accuracy"] - cells["label_prior_accuracy"]
    return cells


def open_gate_maps(edit_dir: Path) -> dict[str, torch.Tensor]:
    """Per gate kind, the ``[layer, head]`` map of gates a saved JoLA edit keeps open at evaluation (no model
    needed)."""
    from safetensors.torch import load_file

    from jolalens import JolaConfig

    config = JolaConfig.from_dict(json.loads((edit_dir / "jola_config.json").read_text())["config"])
    rows: dict[str, dict[int, torch.Tensor]] = {}
    for key, log_alpha in load_file(str(edit_dir / "jola_weights.safetensors")).items():
        if ".log_alpha_" in key:
            rows.setdefault(key.rsplit("log_alpha_", 1)[1], {})[int(key.split(".")[1])] = (
                config.gate.deterministic(log_alpha) > 0
            )
    return {kind: torch.stack([layers[i] for i in sorted(layers)]) for kind, layers in rows.items()}


def open_heads(edit_dir: Path) -> set[tuple[str, int, int]]:
    """(kind, layer, head) of every gate a saved JoLA edit keeps open at evaluation."""
    return {
        (kind, layer, head)
        for kind, open_ in open_gate_maps(edit_dir).items()
        for layer, head in open_.nonzero().tolist()
    }


HEAD_GROUPS = ("main", "nlu", "nlg")  # groups whose JoLA runs are compared across tasks


def selective_jola_runs(out: Path) -> dict[tuple[str, int], torch.Tensor]:
    """``(task, seed)`` -> heads with any gate open, for every JoLA run that closed some gates but not all."""
    runs = {}
    for group in HEAD_GROUPS:
        for edit in sorted((out / group / "runs").glob("*/jola/seed*/edit")):
            if not (edit / "jola_config.json").is_file():
                continue
            maps = list(open_gate_maps(edit).values())
            open_ = torch.stack(maps).any(dim=0)
            if 0 < int(open_.sum()) < open_.numel():
                runs[(edit.parents[2].name, int(edit.parent.name[4:]))] = open_
    return runs


def head_set_pairs(runs: dict[tuple[str, int], torch.Tensor]) -> pd.DataFrame:
    """Every pair of runs, their overlap against chance, by what the two runs share.

    The seed fixes the initial gates and edit vectors, so runs of two tasks with one seed share their
    start; pairs with other seeds and other tasks are the control. Chance is two uniform random head
    sets of the same sizes: expected overlap ``k_a k_b / N`` and the hypergeometric tail
    ``P(overlap >= observed)``."""
    from jolalens.analysis import hypergeometric_p_value

    rows = []
    keys = sorted(runs)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            ma, mb = runs[a], runs[b]
            n, ka, kb, both = ma.numel(), int(ma.sum()), int(mb.sum()), int((ma & mb).sum())
            expected = ka * kb / n
            rows.append(
                {
                    "run_a": f"{a[0]}/seed{a[1]}",
                    "run_b": f"{b[0]}/seed{b[1]}",
                    "pair": (
                        "same task, other seed"
                        if a[0] == b[0]
                        else "other task, same seed (same start)"
                        if a[1] == b[1]
                        else "other task, other seed"
                    ),
                    "k_a": ka,
                    "k_b": kb,
                    "overlap": both,
                    "expected_overlap": expected,
                    "jaccard": both / (ka + kb - both),
                    "chance_jaccard": expected / (ka + kb - expected),
                    "p": hypergeometric_p_value(both, n, ka, kb),
                }
            )
    return pd.DataFrame(rows)


def _head_pairs_section(pairs: pd.DataFrame) -> list[str]:
    if pairs.empty:
        return []
    lines = [
        "",
        "## JoLA's open heads across tasks and seeds",
        "",
        "Every JoLA run (main table, MMLU, GEM) that closed some gates but not all; a head is open if either of its "
        "gates is. The seed fixes the initial gates and edit vectors, so two tasks' runs with the same seed start "
        "alike; other task and other seed is the control. Chance: random head sets of the same sizes (expected overlap "
        "k_a k_b / N; hypergeometric p). "
        "All pairs: `jola_head_pairs.csv`.",
        "",
        "| pairs | n | mean Jaccard | mean chance Jaccard | overlap / expected (mean) | pairs above chance (p < 0.05) "
        "|",
        "|---|---|---|---|---|---|",
    ]
    for kind, g in pairs.groupby("pair", sort=True):
        ratio = (g["overlap"] / g["expected_overlap"]).mean()
        lines.append(
            f"| {kind} | {len(g)} | {g['jaccard'].mean():.2f} | {g['chance_jaccard'].mean():.2f} "
            f"| {ratio:.2f} | {int((g['p'] < 0.05).sum())} |"
        )
    return lines


FAMILIES = {**{t: "commonsense" for t in COMMONSENSE}, **{t: "MMLU" for t in MMLU}, **{t: "GEM" for t in GEM}}


def head_pairs_by_family(pairs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One seed's pairs of different tasks, grouped by the two tasks' families (commonsense, MMLU, GEM).

    With one seed every run starts from the same gates, so families are compared on equal terms."""
    if pairs.empty:
        return pd.DataFrame()
    tag = f"/seed{seed}"
    same = pairs[pairs["run_a"].str.endswith(tag) & pairs["run_b"].str.endswith(tag)]
    if same.empty:
        return pd.DataFrame()
    fam = [
        " / ".join(sorted((FAMILIES.get(a.split("/")[0], "other"), FAMILIES.get(b.split("/")[0], "other"))))
        for a, b in zip(same["run_a"], same["run_b"], strict=True)
    ]
    same = same.assign(families=fam, ratio=same["overlap"] / same["expected_overlap"])
    return (
        same.groupby("families", sort=True)
        .agg(
            pairs=("ratio", "size"),
            jaccard=("jaccard", "mean"),
            chance_jaccard=("chance_jaccard", "mean"),
            ratio=("ratio", "mean"),
            above_chance=("p", lambda p: int((p < 0.05).sum())),
        )
        .reset_index()
    )


def _family_section(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    lines = [
        "",
        "Seed 0 only, pairs of different tasks grouped by task family:",
        "",
        "| families | pairs | mean Jaccard | mean chance Jaccard | overlap / expected (mean) | pairs above chance (p < "
        "0.05) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.families} | {r.pairs} | {r.jaccard:.2f} | {r.chance_jaccard:.2f} | {r.ratio:.2f} | {r.above_chance} |"
        for r in table.itertuples()
    ]
    return lines


def _open_counts(runs: dict[tuple[str, int], torch.Tensor], seed: int) -> tuple[torch.Tensor, int]:
    """``[layer, head]``: in how many tasks' runs with ``seed`` the head is open; and how many runs."""
    maps = [m for (_, s), m in sorted(runs.items()) if s == seed]
    return (torch.stack(maps).sum(dim=0) if maps else torch.zeros(0, 0)), len(maps)


def _shared_heads_lines(runs: dict[tuple[str, int], torch.Tensor], seed: int = 0, top: int = 6) -> list[str]:
    """The heads open in the most tasks (one seed), and where in depth the open heads lie."""
    counts, n_runs = _open_counts(runs, seed)
    if not n_runs:
        return []
    n_layers, n_heads = counts.shape
    order = torch.sort(-counts.flatten(), stable=True).indices[:top].tolist()
    shared = ", ".join(f"L{i // n_heads}H{i % n_heads} ({int(counts.flatten()[i])})" for i in order)
    half = n_layers // 2
    lower = counts[:half].sum().item() / max(counts.sum().item(), 1)
    return [
        "",
        f"Seed {seed}, {n_runs} tasks: the heads open in the most tasks are {shared}; "
        f"{100 * lower:.0f}% of the open heads lie in layers 0-{half - 1}, {100 * (1 - lower):.0f}% in layers "
        f"{half}-{n_layers - 1} (`figures/paper_grid/jola_open_heads_across_tasks.html`).",
    ]


def head_count_figure(runs: dict[tuple[str, int], torch.Tensor], seed: int = 0):
    """In how many tasks' runs (one seed) each head has an open gate."""
    from jolalens.analysis.figures import head_heatmap

    counts, n_runs = _open_counts(runs, seed)
    return head_heatmap(
        counts.float(),
        title=f"JoLA: in how many of {n_runs} tasks each head is open (seed {seed})",
        colorbar_title="tasks",
    )


def repeat_table(out: Path, first: str = "main", second: str = "repeat") -> pd.DataFrame:
    """Per run present in both groups: both accuracies, changed predictions, McNemar between runs,
    whether the same hyper-parameters were chosen, and for JoLA the Jaccard of the open-gate sets."""
    rows = []
    for run_b in sorted((out / second / "runs").glob("*/*/seed*")):
        run_a = out / first / run_b.relative_to(out / second)
        a, b = read_items(run_a), read_items(run_b)
        p_runs = items_p(a, b)
        if pd.isna(p_runs):
            continue
        ca, cb = a["correct"].astype(bool).to_numpy(), b["correct"].astype(bool).to_numpy()
        ra, rb = (json.loads((r / "result.json").read_text()) for r in (run_a, run_b))
        row = {
            "task": run_b.parent.parent.name,
            "method": run_b.parent.name,
            "seed": int(run_b.name[4:]),
            "accuracy_first": float(ca.mean()),
            "accuracy_second": float(cb.mean()),
            "difference": float(cb.mean() - ca.mean()),
            "changed_predictions": int((a["prediction"].astype(str) != b["prediction"].astype(str)).sum()),
            "mcnemar_p": p_runs,
            "same_hyperparameters": ra.get("hyperparameters") == rb.get("hyperparameters"),
            "val_ce_first": ra.get("val_ce"),
            "val_ce_second": rb.get("val_ce"),
        }
        if all((r / "edit" / "jola_weights.safetensors").is_file() for r in (run_a, run_b)) and row[
            "method"
        ].startswith("jola"):
            ha, hb = open_heads(run_a / "edit"), open_heads(run_b / "edit")
            row["open_heads_first"], row["open_heads_second"] = len(ha), len(hb)
            row["open_heads_jaccard"] = len(ha & hb) / len(ha | hb) if ha | hb else 1.0
        rows.append(row)
    return pd.DataFrame(rows)


def gen_table(out: Path) -> pd.DataFrame:
    """The main table's runs scored with the generation protocol (``gen_result.json``), with the share
    of outputs from which no answer could be read (``unparsed``) and the share whose first line lists
    two or more labels (``listing``, such as a copy of the prompt's format line); NaN without
    per-item results."""
    from jolalens.evaluate import labels_named

    rows = []
    for path in sorted((out / "main" / "runs").glob("*/*/seed*/gen_result.json")):
        row = json.loads(path.read_text())
        items = read_items(path.parent, "gen_test_items")
        row["accuracy_spaced"] = float("nan")
        if items is None:
            row["unparsed"] = row["listing"] = float("nan")
        else:
            outputs = items["output"].fillna("").astype(str)
            row["unparsed"] = float(items["prediction"].isna().mean())
            row["listing"] = float(np.mean([len(labels_named(o, row["task"])) > 1 for o in outputs]))
            row["accuracy_spaced"] = spaced_accuracy(items, read_items(path.parent, "test_items"), row["task"])
        rows.append(row)
    return pd.DataFrame(rows)


def spaced_accuracy(gen_items: pd.DataFrame, loglik_items: pd.DataFrame | None, task: str) -> float:
    """Generation-protocol accuracy when a label written with a space ("option 2") is read too,
    with each item's own options (from the log-likelihood items of the same run); NaN without them."""
    from ast import literal_eval

    from jolalens.evaluate import extract_answer

    if loglik_items is None or "choices" not in loglik_items or not same_items(gen_items, loglik_items):
        return float("nan")
    choices = [literal_eval(c) for c in loglik_items.sort_values("item")["choices"]]
    gen = gen_items.sort_values("item")
    read = [
        extract_answer(o, task, c, spaced_labels=True)
        for o, c in zip(gen["output"].fillna("").astype(str), choices, strict=True)
    ]
    # read_items parses BoolQ's "true" as a bool: compare as lower-case text
    return float(
        np.mean([p is not None and p.lower() == str(a).lower() for p, a in zip(read, gen["answer"], strict=True)])
    )


def _spaced_section(gen: pd.DataFrame) -> list[str]:
    """The generation-protocol cells whose accuracy changes when "option 2" is read as option2."""
    changed = gen[(gen["accuracy_spaced"] - gen["accuracy"]).abs() > 1e-9].sort_values(["method", "task", "seed"])
    if changed.empty:
        return []
    lines = [
        "",
        '### The same generations, reading a label written with a space ("option 2")',
        "",
        "The protocol's extractor, like the paper's, reads `option2` but not `option 2`. Cells whose accuracy "
        "changes when the space is allowed (`extract_answer(..., spaced_labels=True)`; a line naming two labels "
        "still holds no answer). Every other cell is unchanged.",
        "",
        "| method | task | seed | accuracy (protocol) | accuracy (spaced labels read) |",
        "|---|---|---|---|---|",
    ]
    return lines + [
        f"| {r.method} | {r.task} | {r.seed} | {_pct(r.accuracy)} | {_pct(r.accuracy_spaced)} |"
        for r in changed.itertuples()
    ]


def multi_reference_rouge(out: Path, group: str = "nlg") -> pd.DataFrame:
    """ROUGE-L of the stored GEM outputs against every test reference of the same input.

    The protocol scores each (input, reference) pair against its own reference; E2E and WebNLG
    have several references per input, and GEM's own metrics use them all. Needs the GEM task
    cache (no model); empty without it."""
    from jolalens.errors import JolaError
    from jolalens.evaluate import nlg_scores
    from jolalens.tasks import load_task_splits

    rows = []
    for task_dir in sorted((out / group / "runs").glob("*")):
        runs = sorted(r for r in task_dir.glob("*/seed*") if (r / "result.json").is_file())
        try:
            full = load_task_splits(task_dir.name, n_train=0, n_valid=0, n_test=None, download=False).test
        except (JolaError, OSError):
            continue  # the task is not cached here
        refs: dict[str, list[str]] = {}
        for ex in full:
            refs.setdefault(ex.meta.get("input", ex.instruction), []).append(ex.answer)
        if max(len(v) for v in refs.values()) < 2:
            continue  # one reference per input: nothing to add
        tests: dict[int, list] = {}  # the runs of one group share their test subset: load it once
        for run in runs:
            items = read_items(run, "test_items")
            result = json.loads((run / "result.json").read_text())
            if result["n_test"] not in tests:
                tests[result["n_test"]] = load_task_splits(
                    task_dir.name, n_train=0, n_valid=0, n_test=result["n_test"], download=False
                ).test
            test = tests[result["n_test"]]
            if items is None or len(items) != len(test):
                continue
            items = items.sort_values("item")
            by_input = [refs[ex.meta.get("input", ex.instruction)] for ex in test]
            _, _, rouge = nlg_scores(items["prediction"].fillna("").astype(str).tolist(), by_input)
            rows.append(
                {
                    "task": task_dir.name,
                    "method": run.parent.name,
                    "seed": int(run.name[4:]),
                    "rougeL_own_reference": float(result["score"]),
                    "rougeL_all_references": float(np.mean(rouge)),
                    "references_per_item": float(np.mean([len(r) for r in by_input])),
                }
            )
    return pd.DataFrame(rows)


def uncached_run_tasks(out: Path, group: str = "nlg") -> list[str]:
    """The group's tasks that have finished runs but no test data in this machine's task cache, so
    that the multi-reference section can say what it left out instead of dropping it silently."""
    from jolalens.tasks.sources import cached_split_sizes

    runs_dir = out / group / "runs"
    with_runs = (
        sorted(d.name for d in runs_dir.glob("*") if any(d.glob("*/seed*/result.json"))) if runs_dir.is_dir() else []
    )
    return [task for task in with_runs if not cached_split_sizes(task)]


def _multi_reference_section(table: pd.DataFrame, uncached: list[str] | tuple[str, ...] = ()) -> list[str]:
    if table.empty and not uncached:
        return []
    lines = [
        "",
        "### GEM outputs against every reference of their input",
        "",
        "The protocol scores each test pair against its own reference, the same for every method; here the same "
        "stored outputs are scored against all the test references of the same input (best reference, as "
        "`rouge_score` does), as GEM's metrics would (`multi_reference_rouge`).",
        "",
    ]
    if uncached:
        lines += [
            f"**Not scored on this machine: {', '.join(uncached)}.** Their test data is not in the task cache. "
            'Load each once where the network reaches PyPI (`python -c "from jolalens.tasks import load_task_splits; '
            "load_task_splits('TASK', n_train=0, n_valid=0, n_test=1)\"`) and rerun this report.",
            "",
        ]
    if table.empty:
        return lines
    lines += [
        "| task | method | seed | references per item | ROUGE-L, own reference | ROUGE-L, all references |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {r.task} | {r.method} | {r.seed} | {r.references_per_item:.1f} | {r.rougeL_own_reference:.1f} | "
        f"{r.rougeL_all_references:.1f} |"
        for r in table.itertuples()
    ]


def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.1f}"


def _task_table(first: str, rows: list[tuple[str, str]], tasks: list[str], cell) -> list[str]:
    """A markdown table with one column per task: ``rows`` are (label, method) pairs and
    ``cell(method, task)`` writes each cell."""
    return ["| " + " | ".join([first, *tasks]) + " |", "|---|" + "---|" * len(tasks)] + [
        f"| {label} | " + " | ".join(cell(method, task) for task in tasks) + " |" for label, method in rows
    ]


def report(out: Path, *, attribution: bool = True) -> str:
    """Write ``report.md`` (and ``report_cells.csv``); ``attribution``: append the attribution
    section from the last figures run's table."""
    results = collect(out / "main")
    summary = summarise(results)
    cells = cell_table(out)
    cells.to_csv(out / "report_cells.csv", index=False)
    seed0 = cells[cells["seed"] == 0]
    tasks = sorted(seed0["task"].unique())
    methods = [m for m in ORDER if m in set(seed0["method"])]
    lines = [
        "# The #7 grid: report",
        "",
        "Written by `python benchmarks/paper_grid_report.py` from the runs under this directory.",
        "",
        "## Main table: test accuracy (%)",
        "",
        markdown_table(summary, methods_order=ORDER),
        "",
        "`fit s`: mean wall time per cell over the cells run on the grid's usual device (cells run on a CPU "
        "instead are left out of it).",
        "",
        "## Against zero-shot, seed 0: accuracy − zero-shot (points), McNemar p, label-prior accuracy",
        "",
        "Each cell: `Δ vs zero-shot (p) | label-prior accuracy`. Bold where p < 0.05.",
        "",
    ]

    def delta_cell(method: str, task: str) -> str:
        c = seed0[(seed0["method"] == method) & (seed0["task"] == task)]
        if c.empty:
            return "–"
        c = c.iloc[0]
        if method == "zeroshot":
            return f"{_pct(c['accuracy'])} \\| {_pct(c['label_prior_accuracy'])}"
        delta = (
            f"{100 * c['minus_zeroshot']:+.1f} (p={c['mcnemar_p']:.2g})" if pd.notna(c.get("minus_zeroshot")) else "–"
        )
        if pd.notna(c.get("mcnemar_p")) and c["mcnemar_p"] < 0.05:
            delta = f"**{delta}**"
        return f"{delta} \\| {_pct(c['label_prior_accuracy'])}"

    rows = [("zeroshot (accuracy \\| label-prior)" if m == "zeroshot" else m, m) for m in methods]
    lines += _task_table("method", rows, tasks, delta_cell)
    jola = seed0[seed0["method"].str.startswith("jola")].copy()
    if not jola.empty:
        lines += [
            "",
            "## JoLA: closed gates at the kept epoch (fraction of the 270 heads), seed 0",
            "",
            "| method | task | closed additive | closed multiplicative | best epoch | lr |",
            "|---|---|---|---|---|---|",
        ]
        for r in jola.sort_values(["method", "task"]).itertuples():
            lines.append(
                f"| {r.method} | {r.task} | {_pct(getattr(r, 'closed_additive', float('nan')))}% | "
                f"{_pct(getattr(r, 'closed_multiplicative', float('nan')))}% | {int(getattr(r, 'best_epoch', -1))} | "
                f"{json.loads(r.hyperparameters).get('lr')} |"
            )
    wins = []
    for method in methods if "jola" in methods else []:
        if method in ("jola", "zeroshot"):
            continue
        both = (
            seed0[seed0["method"].isin(["jola", method])]
            .pivot(index="task", columns="method", values="accuracy")
            .dropna()
        )
        if len(both):
            wins.append(
                f"| {method} | {int((both['jola'] > both[method]).sum())} | "
                f"{int((both['jola'] == both[method]).sum())} | "
                f"{int((both['jola'] < both[method]).sum())} | {len(both)} |"
            )
    if wins:
        lines += [
            "",
            "## JoLA against each method, seed 0: tasks won / tied / lost",
            "",
            "| method | JoLA better | tie | JoLA worse | tasks |",
            "|---|---|---|---|---|",
            *wins,
        ]
    lines += _jola_every_seed_section(jola_against_every_seed(cells))
    lines += _jola_every_seed_section(
        jola_against_every_seed(cells, ablations=True), "JoLA against its ablations over every seed both have run"
    )
    gen = gen_table(out)
    lines += _seed_section(cells, gen)
    lines += _baseline_seed_section(cells, gen)
    lines += _ablation_section(seed0, out / "main" / "runs")
    lines += _ablation_later_seeds_section(ablation_later_seeds(cells, gen, out / "main" / "runs"))
    lines += _repeat_section(out)
    lines += _near_tie_section(cells)
    if not gen.empty:
        both = gen.merge(
            cells[["task", "method", "seed", "accuracy"]], on=["task", "method", "seed"], suffixes=("_gen", "_loglik")
        )
        tasks_gen = sorted(both["task"].unique())
        lines += [
            "",
            "## The same edits scored with the generation protocol, seed 0: test accuracy (%)",
            "",
            "Each cell: generation-protocol accuracy (log-likelihood accuracy of the same edit; share of outputs "
            "with no readable answer / share whose first line lists two or more labels). Beam search with 4 beams; the "
            "answer is read off the first generated line "
            "with anchored, whole-word extractors (`jolalens.evaluate.extract_answer`); a line that names two "
            "different labels, such as the prompt's format line `answer1/answer2/answer3/answer4`, holds no "
            "answer. The same 500 items.",
            "",
        ]

        def gen_cell(method: str, task: str) -> str:
            c = both[(both["method"] == method) & (both["task"] == task) & (both["seed"] == 0)]
            return (
                "–"
                if c.empty
                else (
                    f"{_pct(c.iloc[0]['accuracy_gen'])} ({_pct(c.iloc[0]['accuracy_loglik'])}; "
                    f"{_pct(c.iloc[0]['unparsed'])}% / {_pct(c.iloc[0]['listing'])}%)"
                )
            )

        lines += _task_table("method", [(m, m) for m in ORDER if m in set(both["method"])], tasks_gen, gen_cell)
        lines += _spaced_section(gen)
        scored = set(zip(both["task"], both["method"], both["seed"], strict=True))
        waiting = pd.Series(
            [r.method for r in seed0.itertuples() if r.task in tasks_gen and (r.task, r.method, 0) not in scored],
            dtype=object,
        ).value_counts()
        if len(waiting):
            lines += [
                "",
                "Seed-0 runs not scored with this protocol yet (`gen` cells of the queue), by method: "
                + ", ".join(f"{m} {n}" for m, n in waiting.sort_index().items())
                + ".",
            ]
    for group, title, scale in (
        ("nlu", "NLU (MMLU domains): test accuracy (%)", 100.0),
        ("nlg", "NLG (GEM): ROUGE-L", 1.0),
    ):
        results = collect(out / group) if (out / group / "runs").is_dir() else pd.DataFrame()
        if not results.empty and (results.get("status") == "done").any():
            lines += [
                "",
                f"## {title}",
                "",
                markdown_table(summarise(results), methods_order=ORDER, scale=scale),
                "`fit s`: as in the main table, cells run on another device than the group's usual one are left out "
                "(–: all of the method's cells were).",
            ]
            if group == "nlu":
                cells = cell_table(out, group)
                lines += _prior_section(cells) + _pooled_section(pooled_vs_zeroshot(out, group), cells)
            else:
                lines += _paired_score_section(paired_score_differences(out, group))
                uncached = uncached_run_tasks(out, group)
                if uncached:
                    print(
                        f"warning: {', '.join(uncached)} not in the task cache; the multi-reference GEM section "
                        "leaves them out and says so",
                        file=sys.stderr,
                    )
                lines += _multi_reference_section(multi_reference_rouge(out, group), uncached)
    curve = datasize_curve(out)
    if not curve.empty:
        cells = curve.assign(text=[f"{_pct(r.mean)} ({_pct(r.label_prior)})" for r in curve.itertuples()])
        pivot = cells[cells["method"] != "zeroshot"].pivot(index=["task", "method"], columns="n_train", values="text")
        zeroshot = cells[cells["method"] == "zeroshot"].set_index("task")["text"]
        lines += [
            "",
            "## Data size: test accuracy (%) by number of training examples",
            "",
            "Seed 0; each cell: accuracy (label-prior accuracy). The n = 200 column is the main table's "
            "runs (same protocol and data).",
            "",
            "| task | method | zero-shot | " + " | ".join(str(n) for n in pivot.columns) + " |",
            "|---|---|---|" + "---|" * len(pivot.columns),
        ]
        for (task, method), vals in pivot.iterrows():
            lines.append(
                f"| {task} | {method} | {zeroshot.get(task, '–')} | "
                + " | ".join("–" if pd.isna(v) else v for v in vals)
                + " |"
            )
    head_runs = selective_jola_runs(out)
    pairs = head_set_pairs(head_runs)
    if not pairs.empty:
        pairs.to_csv(out / "jola_head_pairs.csv", index=False)
    lines += _head_pairs_section(pairs) + _family_section(head_pairs_by_family(pairs)) + _shared_heads_lines(head_runs)
    lines += _attribution_section(out) if attribution else []
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def datasize_curve(out: Path) -> pd.DataFrame:
    """Seed-0 test accuracy (fraction) of the data-size methods by training-set size: one row per
    (task, method, n_train) that has run. The main table's runs are the n = 200 point (same
    protocol and data); zero-shot rows carry ``n_train = 0``; ``label_prior`` is the run's
    label-prior accuracy. Empty until a data-size cell ran."""
    rows = []
    for path in sorted(out.glob("datasize_n*")):
        results = collect(path) if (path / "runs").is_dir() else pd.DataFrame()
        if not results.empty and "score" in results:
            seed0 = results[results["seed"] == 0]
            rows.append(summarise(seed0).assign(n_train=int(path.name.removeprefix("datasize_n"))))
    if not rows:
        return pd.DataFrame(columns=["task", "method", "n_train", "mean", "label_prior"])
    main = collect(out / "main")
    main = main[main["task"].isin(DATASIZE_TASKS) & (main["seed"] == 0) & (main["status"] == "done")]
    rows.append(summarise(main[main["method"].isin(DATASIZE_METHODS)]).assign(n_train=200))
    rows.append(summarise(main[main["method"] == "zeroshot"]).assign(n_train=0))
    curve = pd.concat(rows, ignore_index=True)[["task", "method", "n_train", "mean"]]

    def prior(row) -> float:
        group = "main" if row.n_train in (0, 200) else f"datasize_n{row.n_train}"
        items = read_items(out / group / "runs" / row.task / row.method / "seed0")
        return math.nan if items is None else label_prior_accuracy(items["prediction"], items["answer"])

    curve["label_prior"] = [prior(row) for row in curve.itertuples()]
    return curve.sort_values(["task", "method", "n_train"], ignore_index=True)


DATASIZE_X_RANGE = (35, 1400)  # training examples: a margin around 50 and 1000 on the log axis


def datasize_figure(curve: pd.DataFrame):
    """Test accuracy against the number of training examples (log scale), one panel per task,
    zero-shot as a dotted line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tasks = sorted(curve["task"].unique())
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, shared_yaxes=False)
    colours = dict(zip(DATASIZE_METHODS, ("#1f77b4", "#d62728", "#2ca02c"), strict=True))
    symbols = dict(zip(DATASIZE_METHODS, ("circle", "square", "diamond"), strict=True))  # tell apart equal points
    for col, task in enumerate(tasks, start=1):
        rows = curve[curve["task"] == task]
        for method in DATASIZE_METHODS:
            line = rows[(rows["method"] == method) & (rows["n_train"] > 0)]
            fig.add_trace(
                go.Scatter(
                    x=line["n_train"],
                    y=100 * line["mean"],
                    mode="lines+markers",
                    name=method,
                    legendgroup=method,
                    showlegend=col == 1,
                    line={"color": colours[method]},
                    marker={"symbol": symbols[method], "size": 9},
                ),
                row=1,
                col=col,
            )
        zeroshot = rows.loc[rows["method"] == "zeroshot", "mean"]
        if len(zeroshot):  # a legend entry, not a text label: a label would sit on the curves
            level = 100 * float(zeroshot.iloc[0])
            fig.add_trace(
                go.Scatter(
                    x=list(DATASIZE_X_RANGE),
                    y=[level, level],
                    mode="lines",
                    name="zero-shot",
                    legendgroup="zeroshot",
                    showlegend=col == 1,
                    line={"color": "grey", "dash": "dot"},
                    hoverinfo="y",
                ),
                row=1,
                col=col,
            )
        low, high = 100 * rows["mean"].min(), 100 * rows["mean"].max()
        fig.update_yaxes(range=[low - 2, high + 2], row=1, col=col)  # no magnified 0.2-point differences
    fig.update_xaxes(
        type="log",
        tickvals=list(DATASIZES),
        range=[math.log10(x) for x in DATASIZE_X_RANGE],
        title_text="training examples",
    )
    fig.update_yaxes(title_text="test accuracy (%)", col=1)
    fig.update_layout(
        title="Data size: test accuracy by number of training examples, SmolLM2-135M, seed 0",
        width=450 * len(tasks),
        height=420,
    )
    return fig


ABLATIONS = {
    "jola": "JoLA (both edits, separate gates)",
    "jola_additive": "additive only",
    "jola_multiplicative": "multiplicative only",
    "jola_shared_gate": "one shared gate",
    "jola_no_gate": "no gates",
}


def _prior_section(cells: pd.DataFrame) -> list[str]:
    """Per seed-0 run: accuracy, label-prior accuracy and the share of the most frequent answer."""
    seed0 = cells[cells["seed"] == 0]
    tasks = sorted(seed0["task"].unique())

    def prior_cell(method: str, task: str) -> str:
        c = seed0[(seed0["method"] == method) & (seed0["task"] == task)]
        return (
            "–"
            if c.empty
            else " \\| ".join(_pct(c.iloc[0][k]) for k in ("accuracy", "label_prior_accuracy", "top_label_share"))
        )

    return [
        "",
        "Each cell: accuracy | label-prior accuracy | share of the most frequent answer (%), seed 0.",
        "",
    ] + _task_table("method", [(m, m) for m in ORDER if m in set(seed0["method"])], tasks, prior_cell)


def pooled_vs_zeroshot(out: Path, group: str = "nlu") -> pd.DataFrame:
    """Per method, seed 0: the test items of every task it ran pooled, against zero-shot on the same items.

    One exact McNemar test over all items, where each task alone is too small to show a few points."""
    rows = []
    runs = out / group / "runs"
    for method in sorted({p.name for p in runs.glob("*/*") if p.is_dir()} - {"zeroshot"}):
        ours, zero, tasks = [], [], []
        for task_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
            a, b = read_items(task_dir / method / "seed0"), read_items(task_dir / "zeroshot" / "seed0")
            if a is None or b is None or not (task_dir / method / "seed0" / "result.json").is_file():
                continue
            if not same_items(a, b):
                raise ValueError(f"{task_dir.name}: {method} and zero-shot were scored on different test items")
            ours.append(a["correct"].astype(bool).to_numpy())
            zero.append(b["correct"].astype(bool).to_numpy())
            tasks.append(task_dir.name)
        if not tasks:
            continue
        ca, cz = np.concatenate(ours), np.concatenate(zero)
        better, worse = int((ca & ~cz).sum()), int((~ca & cz).sum())
        rows.append(
            {
                "method": method,
                "tasks": len(tasks),
                "items": len(ca),
                "accuracy": float(ca.mean()),
                "zeroshot_accuracy": float(cz.mean()),
                "better": better,
                "worse": worse,
                "mcnemar_p": mcnemar_exact_p(better, worse),
            }
        )
    return pd.DataFrame(rows)


def _pooled_section(pooled: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    """The pooled test against zero-shot, with how many single tasks reach p < 0.05 each way."""
    if pooled.empty:
        return []
    seed0 = cells[(cells["seed"] == 0) & cells["mcnemar_p"].notna()]
    lines = [
        "",
        "All tasks' test items pooled, seed 0, against zero-shot on the same items (exact McNemar); "
        "the last column counts single tasks with p < 0.05 (up / down).",
        "",
        "| method | tasks | items | accuracy (%) | zero-shot on the same items (%) | items won / lost | p | tasks p < "
        "0.05 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in pooled.itertuples():
        mine = seed0[(seed0["method"] == r.method) & (seed0["mcnemar_p"] < 0.05)]
        up, down = int((mine["minus_zeroshot"] > 0).sum()), int((mine["minus_zeroshot"] < 0).sum())
        lines.append(
            f"| {r.method} | {r.tasks} | {r.items} | {_pct(r.accuracy)} | {_pct(r.zeroshot_accuracy)} "
            f"| {r.better} / {r.worse} | {r.mcnemar_p:.2g} | {up} / {down} |"
        )
    return lines


def paired_score_differences(
    out: Path, group: str = "nlg", against: str = "jola", *, metric: str = "rougeL", resamples: int = 10_000
) -> pd.DataFrame:
    """Seed 0, per task: ``against`` minus each other method on the same items, with a 95% paired-bootstrap interval.

    For per-item scores such as ROUGE-L, where McNemar's test does not apply. The resampling is seeded."""
    rows = []
    runs = out / group / "runs"
    for task_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        ours = read_items(task_dir / against / "seed0")
        if ours is None:
            continue
        for other_dir in sorted(p for p in task_dir.iterdir() if p.is_dir() and p.name != against):
            theirs = read_items(other_dir / "seed0")
            if theirs is None:
                continue
            if not same_items(ours, theirs):
                raise ValueError(f"{task_dir.name}: {against} and {other_dir.name} were scored on different test items")
            diff = ours[metric].to_numpy(float) - theirs[metric].to_numpy(float)
            interval = paired_bootstrap(diff, resamples=resamples, confidence=0.95, seed=0)
            low, high = interval.low, interval.high
            rows.append(
                {
                    "task": task_dir.name,
                    "method": other_dir.name,
                    "items": len(diff),
                    "difference": float(diff.mean()),
                    "ci_low": float(low),
                    "ci_high": float(high),
                    "items_higher": int((diff > 0).sum()),
                    "items_lower": int((diff < 0).sum()),
                }
            )
    return pd.DataFrame(rows)


def _paired_score_section(paired: pd.DataFrame, against: str = "jola") -> list[str]:
    if paired.empty:
        return []
    lines = [
        "",
        f"{against} minus each method on the same items, seed 0: mean ROUGE-L difference with a 95% paired-bootstrap "
        "interval (10,000 resamples), and the items where it scores higher / lower.",
        "",
        "| task | against | items | difference | 95% interval | higher / lower |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.task} | {r.method} | {r.items} | {r.difference:+.1f} | [{r.ci_low:+.1f}, {r.ci_high:+.1f}] "
        f"| {r.items_higher} / {r.items_lower} |"
        for r in paired.itertuples()
    ]
    return lines


def _seed_section(cells: pd.DataFrame, gen: pd.DataFrame, method: str = "jola") -> list[str]:
    """One method's runs seed by seed: both protocols, the test against zero-shot, the kept point."""
    runs = cells[cells["method"] == method]
    if runs["seed"].nunique() < 2:
        return []
    if not gen.empty:
        runs = runs.merge(
            gen[["task", "method", "seed", "accuracy"]].rename(columns={"accuracy": "gen_accuracy"}),
            on=["task", "method", "seed"],
            how="left",
        )
    lines = [
        "",
        f"## {method} seed by seed: test accuracy (%), the test against zero-shot, what was kept",
        "",
        "Log-likelihood accuracy (generation-protocol accuracy of the same edit), accuracy − zero-shot "
        "(McNemar p), label-prior accuracy, closed additive / multiplicative gates, kept epoch and lr.",
        "",
        "| task | seed | accuracy (gen) | Δ vs zero-shot (p) | label-prior | closed | epoch | lr |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs.sort_values(["task", "seed"]).to_dict("records"):
        closed = "/".join(_pct(r.get(f"closed_{k}", float("nan"))) for k in ("additive", "multiplicative"))
        lines.append(
            f"| {r['task']} | {r['seed']} | {_pct(r['accuracy'])} ({_pct(r.get('gen_accuracy', float('nan')))}) | "
            f"{100 * r.get('minus_zeroshot', float('nan')):+.1f} (p={r.get('mcnemar_p', float('nan')):.2g}) | "
            f"{_pct(r['label_prior_accuracy'])} | {closed}% | {int(r.get('best_epoch', -1))} | "
            f"{json.loads(r['hyperparameters']).get('lr')} |"
        )
    return lines


def _baseline_seed_section(cells: pd.DataFrame, gen: pd.DataFrame) -> list[str]:
    """The other methods' tasks that have run with more than one seed, seed by seed."""
    others = cells[~cells["method"].str.startswith("jola") & (cells["method"] != "zeroshot")]
    repeated = others.groupby(["method", "task"])["seed"].transform("nunique") > 1
    runs = others[repeated]
    if runs.empty:
        return []
    if not gen.empty:
        runs = runs.merge(
            gen[["task", "method", "seed", "accuracy"]].rename(columns={"accuracy": "gen_accuracy"}),
            on=["task", "method", "seed"],
            how="left",
        )
    order = {m: i for i, m in enumerate(ORDER)}
    runs = runs.assign(rank=runs["method"].map(order)).sort_values(["rank", "task", "seed"])
    lines = [
        "",
        "## The other methods seed by seed: test accuracy (%), the test against zero-shot, what was kept",
        "",
        "Log-likelihood accuracy (generation-protocol accuracy of the same edit), accuracy − zero-shot "
        "(McNemar p), answers changed from zero-shot's on the same test items, label-prior accuracy, "
        "the kept hyper-parameters, the most frequent answer and its share. Only the method-task pairs "
        "with more than one seed.",
        "",
        "| method | task | seed | accuracy (gen) | Δ vs zero-shot (p) | changed | label-prior | kept | top answer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs.to_dict("records"):
        changed = r.get("changed_vs_zeroshot", float("nan"))
        lines.append(
            f"| {r['method']} | {r['task']} | {r['seed']} | {_pct(r['accuracy'])} "
            f"({_pct(r.get('gen_accuracy', float('nan')))}) | "
            f"{100 * r.get('minus_zeroshot', float('nan')):+.1f} (p={r.get('mcnemar_p', float('nan')):.2g}) | "
            f"{'–' if pd.isna(changed) else int(changed)} / {r['n_test']} | "
            f"{_pct(r['label_prior_accuracy'])} | {r['hyperparameters']} | "
            f"{r.get('top_label', '–')} {100 * r.get('top_label_share', float('nan')):.0f}% |"
        )
    return lines


def jola_against_every_seed(cells: pd.DataFrame, ablations: bool = False) -> pd.DataFrame:
    """JoLA against each main-table method (or, with ``ablations``, each of its ablations) over
    every (task, seed) cell both have run.

    Zero-shot has no seed: its one run stands against each of JoLA's seeds. The test is a sign
    test over cells (ties dropped), not over items: the same test items recur in every seed, so
    pooling them would count each item up to three times as if it were independent."""
    acc = cells.set_index(["method", "task", "seed"])["accuracy"]
    jola = cells[cells["method"] == "jola"]
    rows = []
    for method in [
        m for m in ORDER if m != "jola" and m.startswith("jola_") == ablations and m in set(cells["method"])
    ]:
        pairs = [
            (r.task, r.seed, r.accuracy, acc.get((method, r.task, 0 if method == "zeroshot" else r.seed)))
            for r in jola.itertuples()
        ]
        pairs = [p for p in pairs if p[3] is not None and pd.notna(p[3])]
        if not pairs:
            continue
        diff = np.array([a - b for _, _, a, b in pairs])
        higher, lower = int((diff > 0).sum()), int((diff < 0).sum())
        by_task = pd.Series(diff).groupby([t for t, *_ in pairs]).mean()
        tasks_higher, tasks_lower = int((by_task > 0).sum()), int((by_task < 0).sum())
        rows.append(
            {
                "method": method,
                "cells": len(pairs),
                "tasks": len({t for t, *_ in pairs}),
                "seeds": len({s for _, s, *_ in pairs}),
                "jola_accuracy": float(np.mean([a for *_, a, _ in pairs])),
                "method_accuracy": float(np.mean([b for *_, b in pairs])),
                "mean_difference": float(diff.mean()),
                "higher": higher,
                "tie": len(pairs) - higher - lower,
                "lower": lower,
                "sign_p": sign_test_p(higher, lower),
                "tasks_higher": tasks_higher,
                "tasks_lower": tasks_lower,
                "task_sign_p": sign_test_p(tasks_higher, tasks_lower),
            }
        )
    return pd.DataFrame(rows)


def _jola_every_seed_section(
    table: pd.DataFrame, title: str = "JoLA against each method over every seed both have run"
) -> list[str]:
    if table.empty or table["seeds"].max() < 2:
        return []
    lines = [
        "",
        f"## {title}",
        "",
        "Per method: the (task, seed) cells that both JoLA and the method have finished (zero-shot: its one run "
        "against each JoLA seed), their mean accuracy, JoLA minus the method in points, the cells where JoLA "
        "is higher / tied / lower, and an exact two-sided sign test over the cells (ties dropped). Not pooled "
        "over items: the test items are the same in every seed. The seeds of one task share its test items, so "
        "the last two columns repeat the sign test over tasks, on each task's mean difference over its cells.",
        "",
        "| method | cells (tasks, seeds) | JoLA (%) | method (%) | JoLA − method | higher / tie / lower | sign-test p "
        "| tasks higher / lower | sign-test p, tasks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.method} | {r.cells} ({r.tasks}, {r.seeds}) | {_pct(r.jola_accuracy)} | {_pct(r.method_accuracy)} "
        f"| {100 * r.mean_difference:+.1f} | {r.higher} / {r.tie} / {r.lower} | {r.sign_p:.2g} "
        f"| {r.tasks_higher} / {r.tasks_lower} | {r.task_sign_p:.2g} |"
        for r in table.itertuples()
    ]
    return lines


def paired_p(run_a: Path, run_b: Path) -> float:
    """Exact McNemar p between two runs on the same test items (NaN without both items files)."""
    return items_p(read_items(run_a), read_items(run_b))


def _ablation_section(seed0: pd.DataFrame, runs_dir: Path) -> list[str]:
    """The paper's ablations, per task that has any: accuracy, its difference from JoLA (tested on
    the same items), closed gates."""
    runs = seed0[seed0["method"].isin(list(ABLATIONS))]
    tasks = sorted(set(runs.loc[runs["method"] != "jola", "task"]))
    if not tasks:
        return []
    lines = [
        "",
        "## The paper's ablations, seed 0: test accuracy (%), difference from JoLA, closed gates",
        "",
        "Each cell: accuracy (Δ vs JoLA; exact McNemar p of the ablation against JoLA on the same 500 items) "
        "and the closed additive / multiplicative gates.",
        "",
    ]

    def ablation_cell(method: str, task: str) -> str:
        c = runs[(runs["method"] == method) & (runs["task"] == task)]
        j = runs[(runs["method"] == "jola") & (runs["task"] == task)]
        if c.empty:
            return "–"
        c = c.iloc[0]
        delta = ""
        if method != "jola" and not j.empty:
            p_jola = paired_p(runs_dir / task / method / "seed0", runs_dir / task / "jola" / "seed0")
            delta = f" ({100 * (c['accuracy'] - j.iloc[0]['accuracy']):+.1f}" + (
                f"; p={p_jola:.2g})" if pd.notna(p_jola) else ")"
            )
        closed = "/".join(_pct(c.get(f"closed_{k}", float("nan"))) for k in ("additive", "multiplicative"))
        return f"{_pct(c['accuracy'])}{delta}, closed {closed}%"

    return lines + _task_table(
        "variant", [(label, method) for method, label in ABLATIONS.items()], tasks, ablation_cell
    )


def answer_shares(items: pd.DataFrame, top: int = 3) -> str:
    """The run's most frequent test answers and their shares, e.g. ``answer3 86%, answer1 8%``."""
    shares = items["prediction"].astype(str).value_counts(normalize=True).iloc[:top]
    return ", ".join(f"{label} {100 * share:.0f}%" for label, share in shares.items())


def ablation_later_seeds(cells: pd.DataFrame, gen: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Every ablation run with a seed above 0 against JoLA's run with the same seed and task.

    One row per run, JoLA's own first in each (task, seed): accuracy, generation-protocol accuracy,
    the difference from JoLA, the exact McNemar p and the number of changed answers on the same
    items, the most frequent answers, closed gates and the kept epoch."""
    later = cells[cells["method"].isin(list(ABLATIONS)) & (cells["seed"] > 0)]
    ablated = later[later["method"] != "jola"]
    pairs = sorted(set(zip(ablated["task"], ablated["seed"], strict=True)))
    gen_acc = (
        {}
        if gen.empty
        else {(r.task, r.method, r.seed): r.accuracy for r in gen[["task", "method", "seed", "accuracy"]].itertuples()}
    )
    rows = []
    for task, seed in pairs:
        here = later[(later["task"] == task) & (later["seed"] == seed)]
        jola_items = read_items(runs_dir / task / "jola" / f"seed{seed}")
        jola_acc = here.loc[here["method"] == "jola", "accuracy"]
        for method in [m for m in ABLATIONS if m in set(here["method"])]:
            c = here[here["method"] == method].iloc[0]
            items = read_items(runs_dir / task / method / f"seed{seed}")
            vs_jola = (
                method != "jola" and items is not None and jola_items is not None and same_items(items, jola_items)
            )
            rows.append(
                {
                    "task": task,
                    "seed": int(seed),
                    "method": method,
                    "accuracy": float(c["accuracy"]),
                    "gen_accuracy": gen_acc.get((task, method, seed), float("nan")),
                    "minus_jola": float(c["accuracy"] - jola_acc.iloc[0])
                    if method != "jola" and len(jola_acc)
                    else float("nan"),
                    "mcnemar_p": items_p(items, jola_items) if vs_jola else float("nan"),
                    "changed_vs_jola": changed_answers(items, jola_items) if vs_jola else float("nan"),
                    "n_test": int(c["n_test"]),
                    "answers": answer_shares(items) if items is not None else "",
                    "closed_additive": c.get("closed_additive", float("nan")),
                    "closed_multiplicative": c.get("closed_multiplicative", float("nan")),
                    "best_epoch": c.get("best_epoch", float("nan")),
                }
            )
    return pd.DataFrame(rows)


def _ablation_later_seeds_section(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    lines = [
        "",
        "## The paper's ablations, later seeds: each run against JoLA's run with the same seed",
        "",
        "Per (task, seed), JoLA's run first, then each ablation: log-likelihood accuracy (generation-protocol "
        "accuracy of the same edit), accuracy − JoLA's in points (exact McNemar p on the same test items), "
        "answers changed from JoLA's, the three most frequent answers with their shares, closed additive / "
        "multiplicative gates and the kept epoch.",
        "",
        "| task | seed | variant | accuracy (gen) | Δ vs JoLA (p) | changed | most frequent answers | closed | epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.to_dict("records"):
        delta = (
            "–"
            if pd.isna(r["minus_jola"])
            else (f"{100 * r['minus_jola']:+.1f}" + ("" if pd.isna(r["mcnemar_p"]) else f" (p={r['mcnemar_p']:.2g})"))
        )
        changed = "–" if pd.isna(r["changed_vs_jola"]) else f"{int(r['changed_vs_jola'])} / {r['n_test']}"
        closed = "/".join(_pct(r[f"closed_{k}"]) for k in ("additive", "multiplicative"))
        epoch = "–" if pd.isna(r["best_epoch"]) else str(int(r["best_epoch"]))
        lines.append(
            f"| {r['task']} | {r['seed']} | {ABLATIONS[r['method']]} | {_pct(r['accuracy'])} "
            f"({_pct(r['gen_accuracy'])}) | {delta} | {changed} | {r['answers']} | {closed}% | {epoch} |"
        )
    return lines


def _repeat_section(out: Path) -> list[str]:
    rep = repeat_table(out)
    if rep.empty:
        return []
    rep.to_csv(out / "repeat_cells.csv", index=False)
    same = rep["difference"] == 0
    lines = [
        "",
        "## Run to run: the same cells again, same seed, same kind of GPU",
        "",
        f"{len(rep)} runs of the main table were run a second time (`repeat/`). {int(same.sum())} scored exactly "
        f"the same; the largest difference is {100 * rep['difference'].abs().max():.1f} points; "
        f"{int(rep['same_hyperparameters'].sum())} chose the same hyper-parameters. "
        "Differences come from nondeterministic GPU kernels (TF32, atomics), not from the seed.",
        "",
        "| task | method | first | second | changed predictions | McNemar p | same hp | JoLA open heads (Jaccard) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rep[(rep["difference"] != 0) | rep["method"].str.startswith("jola")].itertuples():
        heads = (
            f"{int(r.open_heads_first)} / {int(r.open_heads_second)} ({r.open_heads_jaccard:.2f})"
            if "open_heads_jaccard" in rep and pd.notna(getattr(r, "open_heads_jaccard", float("nan")))
            else "–"
        )
        lines.append(
            f"| {r.task} | {r.method} | {_pct(r.accuracy_first)} | {_pct(r.accuracy_second)} | "
            f"{r.changed_predictions} | {r.mcnemar_p:.2g} | {'yes' if r.same_hyperparameters else 'no'} | {heads} |"
        )
    lines.append("")
    lines.append("Rows: every run whose accuracy changed, and every JoLA run. All rows: `repeat_cells.csv`.")
    return lines


def figures(out: Path, dest: Path, *, attribution_examples: int) -> list[Path]:
    """The accuracy-difference heatmap, and per task the comparison figures with JoLA beside
    mean-ablation attribution scores (first-order, on the run's own validation examples)."""
    import plotly.graph_objects as go

    from jolalens import load_model
    from jolalens.analysis import attribution_scores, compare_selection, make_compare_figures
    from jolalens.analysis.compare import jaccard_matrix
    from jolalens.analysis.compare_report import head_level_maps
    from jolalens.analysis.figures import save_figure, similarity_matrix
    from jolalens.tasks import load_task_splits

    cells = pd.read_csv(out / "report_cells.csv")
    seed0 = cells[(cells["seed"] == 0) & (cells["method"] != "zeroshot")]
    pivot = seed0.pivot(index="method", columns="task", values="minus_zeroshot") * 100
    pivot = pivot.reindex([m for m in ORDER if m in pivot.index])
    fig = go.Figure(
        go.Heatmap(
            z=pivot.to_numpy(),
            x=list(pivot.columns),
            y=list(pivot.index),
            colorscale="RdBu",
            zmid=0,
            text=pivot.map(lambda v: "not run" if pd.isna(v) else f"{v:+.1f}").to_numpy(),
            texttemplate="%{text}",
            colorbar={"title": "points"},
        )
    )
    fig.update_layout(
        title="Test accuracy minus zero-shot (points), SmolLM2-135M, seed 0",
        width=900,
        height=480,
        yaxis={"autorange": "reversed"},
    )
    dest.mkdir(parents=True, exist_ok=True)
    written = save_figure(fig, dest / "accuracy_minus_zeroshot")
    curve = datasize_curve(out)
    if not curve.empty:
        written += save_figure(datasize_figure(curve), dest / "datasize")
    runs = selective_jola_runs(out)
    if any(seed == 0 for _, seed in runs):
        written += save_figure(head_count_figure(runs), dest / "jola_open_heads_across_tasks")
        seed0 = {task: m for (task, seed), m in sorted(runs.items()) if seed == 0}
        written += save_figure(
            similarity_matrix(jaccard_matrix(seed0), title="JoLA's open heads, seed 0: Jaccard across tasks"),
            dest / "jola_open_heads_jaccard",
        )
    model = load_model()
    config = json.loads((out / "main" / "compare_config.json").read_text())["protocol"]
    agreement = []
    for task in sorted(cells["task"].unique()):
        jola = head_level_maps(out / "main", task, model).get("JoLA |edit|")
        selective = jola is not None and 0 < int((jola > 0).sum()) < jola.numel()  # some gates closed
        scores = None
        if selective:  # attribution is only worth its CPU time where JoLA actually selected heads
            splits = load_task_splits(task, n_train=config["n_train"], n_valid=config["n_valid"], n_test=0, seed=0)
            scores = attribution_scores(
                model,
                splits.valid[:attribution_examples],
                ablation="mean",
                reference=splits.train[:attribution_examples],
                cache_dir=out / "attribution_cache",
                batch_size=2,
            )  # long HellaSwag endings: keep the logits small
        written += make_compare_figures(out / "main", task, dest / task, model=model, scores=scores)
        if selective:
            row = compare_selection(jola, scores.logprob_drop, threshold=0.0)
            row.insert(0, "task", task)
            agreement.append(row)
    if agreement:
        table = pd.concat(agreement, ignore_index=True).assign(attribution_examples=attribution_examples)
        table.to_csv(out / ATTRIBUTION_CSV, index=False)
    for group in ("nlu", "nlg"):  # MMLU and GEM: scores and head maps, without attribution
        runs_dir = out / group / "runs"
        for task in sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
            written += make_compare_figures(out / group, task, dest / task, model=model)
    return written


ATTRIBUTION_CSV = "jola_open_heads_vs_attribution.csv"


def _attribution_section(out: Path) -> list[str]:
    """The agreement of JoLA's open heads with attribution, as the last ``figures`` run computed it."""
    if not (out / ATTRIBUTION_CSV).is_file():
        return []
    table = pd.read_csv(out / ATTRIBUTION_CSV)
    n = int(table["attribution_examples"].iloc[0])
    lines = [
        "",
        "## JoLA's open heads against mean-ablation attribution (seed 0)",
        "",
        f"Attribution: first-order mean-ablation log-prob drop of the base model on the first {n} "
        f"validation examples, head means from the first {n} training examples; only tasks "
        "where some of JoLA's gates closed. k = the number of heads with an open gate. Computed with the "
        f"figures (`{ATTRIBUTION_CSV}`).",
        "",
        "| task | open heads (k) | overlap with attribution top-k | expected by chance | p (hypergeometric) | Spearman "
        "(all heads) |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {r.task} | {r.n_selected} | {r.overlap} | {r.expected_overlap:.1f} | {r.p_hypergeometric:.2g} | "
        f"{r.spearman:.3f} |"
        for r in table.itertuples()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument(
        "--attribution-examples", type=int, default=48, help="validation (and reference) examples for attribution"
    )
    args = parser.parse_args()
    if not args.no_figures:
        report(args.out, attribution=False)  # figures read the cell table it writes
        for path in figures(args.out, args.figures, attribution_examples=args.attribution_examples):
            print(path)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
