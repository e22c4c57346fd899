"""The paper's comparison grid (issue #7): its cells, run as ``jolalens compare --engine ray`` calls.

Every cell is one ``jolalens compare`` run (task, method, seed) in one of five groups that share a
protocol: ``main`` (8 commonsense tasks, the 7 methods and the 4 JoLA ablations), ``nlu`` (MMLU
domains), ``nlg`` (GEM tasks, generation protocol), ``datasize`` (50-1000 training examples) and
``gen`` (the main table's kept edits re-scored with the generation protocol). The paper's sizes
throughout: 200 train / 200 valid examples, up to 20 epochs with early stopping, the same 500
test items per task (or the whole split if smaller), 2 hyper-parameter points per method chosen
on validation cross-entropy only.

Each group is one comparison directory, ``OUT/{group}/runs/...``, run by the Ray engine of
``jolalens compare`` (``jolalens.engines.ray_engine``): one Ray task per cell with a declared CPU
or GPU share, so that the cells of a small model run side by side on one GPU, and rerunning the
command resumes (done cells are skipped). The ``gen`` cells re-score finished main runs in this
process afterwards. Usage::

    python benchmarks/paper_grid.py --plan                          # list the cells, in order
    python benchmarks/paper_grid.py --gpus-per-cell 0.08 --eval-batch-size 32 --tf32   # 12 cells per GPU
    python benchmarks/paper_grid.py --num-cpus 2                    # resume here, slowly, on 2 CPUs
    python benchmarks/paper_grid.py --address auto --gpus-per-cell 0.25   # an existing Ray cluster
    python benchmarks/paper_grid.py --tables                        # rewrite every summary
    python benchmarks/paper_grid.py --only main --skip 'main__piqa__*'

``--skip`` leaves out the cells whose keys match (shell wildcards), e.g. those too long to finish
before a session ends. On a machine lent by the minute, bound the call with ``timeout``: a cell
counts as done only once its ``result.json`` is written, so a cut-off cell is simply run again
next time.

``--snapshot DIR`` packs what the run finished (edits over 300 kB left out) into tarballs of at most
14 MiB under DIR every 30 s, so that a run cut off by a time limit still returns what it finished.
Files the output folder already held when the run started are not packed again.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import os
import platform
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

OUT = Path(__file__).parent / "results" / "paper_grid"

COMMONSENSE = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "siqa", "winogrande")
MMLU = (
    "mmlu_business",
    "mmlu_economics",
    "mmlu_health",
    "mmlu_history",
    "mmlu_law",
    "mmlu_math",
    "mmlu_other",
    "mmlu_philosophy",
    "mmlu_physics",
    "mmlu_psychology",
)
GEM = ("common_gen", "e2e_nlg", "web_nlg", "xsum")
BASELINES = ("zeroshot", "jola", "iti", "red", "lofit", "bitfit", "lora")
SEED_ORDER = ("red", "bitfit", "lofit", "iti", "lora")  # by seed-0 average (RED 36.7 ... ITI 35.9; LoRA unfinished)
ABLATIONS = ("jola_additive", "jola_multiplicative", "jola_shared_gate", "jola_no_gate")
ABLATION_TASKS = ("openbookqa", "arc_easy", "boolq", "piqa")
DATASIZE_TASKS = ("arc_easy", "boolq")
DATASIZES = (50, 100, 200, 500, 1000)
DATASIZE_METHODS = ("jola", "red", "lora")
SEEDS = (0, 1, 2)
KEEP_EDIT_BYTES = 300_000  # edits that come back from a GPU machine and are committed


@dataclass(frozen=True)
class Cell:
    """One run of the grid: ``group`` names the comparison directory it belongs to."""

    group: str
    task: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.group}__{self.task}__{self.method}__seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / self.group / "runs" / self.task / self.method / f"seed{self.seed}"


def group_config(group: str, *, smoke: bool = False, eval_batch_size: int = 8):
    """The CompareConfig of a group (its protocol stamp); ``smoke``: tiny sizes for a dry run."""
    from jolalens import TrainConfig
    from jolalens.compare import CompareConfig
    from jolalens.evaluate import Protocol

    train = TrainConfig(epochs=20, warmup_steps=50, progress=False, eval_batch_size=eval_batch_size)
    n_train, n_valid, n_test = 200, 200, 500
    if group.startswith("datasize_n"):
        n_train = int(group.removeprefix("datasize_n"))
    if smoke:
        train = TrainConfig(epochs=1, warmup_steps=1, progress=False, eval_batch_size=eval_batch_size)
        n_train, n_valid, n_test = min(n_train, 8), 8, 8
    protocol = Protocol.GEN if group == "nlg" else Protocol.LOGLIK
    tasks = {"main": COMMONSENSE, "rerun": COMMONSENSE, "nlu": MMLU, "nlg": GEM}.get(group, DATASIZE_TASKS)
    methods = tuple(dict.fromkeys(BASELINES + ABLATIONS))
    return CompareConfig(
        methods=methods,
        tasks=tasks,
        seeds=SEEDS,
        n_train=n_train,
        n_valid=n_valid,
        n_test=n_test,
        protocol=protocol,
        budget=2,
        train=train,
    )


def check_methods() -> None:
    """The grid's methods are fixed for the experiment (literal tuples above, results committed),
    but each must be a registered method (``jolalens.methods.METHODS``), and ``ABLATIONS`` the
    registry's ablations of JoLA; a renamed or removed method fails here, before any work."""
    from jolalens.methods import METHODS

    unknown = sorted({c.method for c in plan()} - set(METHODS))
    if unknown:
        raise SystemExit(f"paper_grid: methods {unknown} are not registered; choose from {', '.join(METHODS)}")
    not_ablations = [m for m in ABLATIONS if METHODS[m].ablation_of != "jola"]
    if not_ablations:
        raise SystemExit(f"paper_grid: ABLATIONS {not_ablations} are not ablations of jola in jolalens.methods")


def plan() -> list[Cell]:
    """Every cell, in the order that covers the issue's tables soonest.

    Seed 0 of the main table; the JoLA ablations on four tasks; JoLA's seeds 1 and 2 (is its
    seed-0 lead more than noise?); NLG and NLU; the data-size curves; the generation protocol for
    the main table's seed-0 edits; the other methods' seeds 1 and 2, strongest seed-0 average
    first; then the ablations' seeds and remaining tasks; last, the generation protocol of the
    later seeds' edits where a deadline cut it off.
    """
    cells = [Cell("main", t, m, 0) for m in BASELINES for t in COMMONSENSE]
    cells += [Cell("main", t, m, 0) for m in ABLATIONS for t in ABLATION_TASKS]
    cells += [Cell("main", t, "jola", s) for s in (1, 2) for t in COMMONSENSE]
    cells += [Cell("nlg", t, m, 0) for t in GEM for m in ("zeroshot", "jola", "red")]
    cells += [Cell("nlu", t, m, 0) for t in MMLU for m in ("zeroshot", "jola", "iti", "red")]
    # n = 200 is the main table's protocol: those runs are the curves' middle point
    cells += [
        Cell(f"datasize_n{n}", t, m, 0) for n in DATASIZES if n != 200 for t in DATASIZE_TASKS for m in DATASIZE_METHODS
    ]
    cells += [Cell("gen", t, m, 0) for m in BASELINES for t in COMMONSENSE]
    cells += [Cell("main", t, m, s) for m in SEED_ORDER for s in (1, 2) for t in COMMONSENSE]
    cells += [Cell("main", t, m, s) for s in (1, 2) for m in ABLATIONS for t in ABLATION_TASKS]
    cells += [Cell("main", t, m, 0) for m in ABLATIONS for t in COMMONSENSE if t not in ABLATION_TASKS]
    # a main cell scores both protocols before it is done, so the generation protocol of a later
    # seed is queued only where a deadline stopped the cell between its two scores
    cells += [Cell("gen", c.task, c.method, c.seed) for c in list(cells) if c.group == "main" and c.seed > 0]
    return cells


def selected(
    only: set[str] | None, methods: set[str] | None, tasks: set[str] | None = None, skip: tuple[str, ...] = ()
) -> list[Cell]:
    """The plan, restricted to some groups, methods and/or tasks (``None``: all of them), less the
    cells whose key matches a ``skip`` pattern (shell wildcards, e.g. ``main__piqa__*``)."""
    return [
        c
        for c in plan()
        if (only is None or c.group in only)
        and (methods is None or c.method in methods)
        and (tasks is None or c.task in tasks)
        and not any(fnmatch.fnmatchcase(c.key, pat) for pat in skip)
    ]


def _done(cell: Cell, out: Path) -> bool:
    name = "gen_result.json" if cell.group == "gen" else "result.json"
    if cell.group == "gen":
        return (Cell("main", cell.task, cell.method, cell.seed).run_dir(out) / name).is_file()
    return (cell.run_dir(out) / name).is_file()


def _ready(cell: Cell, out: Path) -> bool:
    """Re-scoring needs the main run's kept edit first."""
    return (
        cell.group != "gen" or (Cell("main", cell.task, cell.method, cell.seed).run_dir(out) / "result.json").is_file()
    )


def uncached_tasks(cells: list[Cell]) -> list[str]:
    """The cells' tasks that are not in this machine's task cache. A lent GPU machine has no
    network and gets only the cache, so a task missing here fails there at once."""
    from jolalens.tasks.sources import cached_split_sizes

    return sorted(t for t in {c.task for c in cells} if not cached_split_sizes(t))


def compress_items(run_dir: Path) -> None:
    """``test_items.csv`` -> ``.csv.gz`` (a third of the size): every committed byte also travels
    to each lent GPU machine with the working tree."""
    import gzip

    plain = run_dir / "test_items.csv"
    if plain.is_file():
        tmp = run_dir / ".test_items.csv.gz.tmp"
        tmp.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
        tmp.replace(run_dir / "test_items.csv.gz")
        plain.unlink()


def edit_kept(run_dir: Path, method: str) -> bool:
    """Whether a run's trained weights are on disk (an unedited method, zero-shot, has none to keep)."""
    from jolalens.methods import get_method

    return get_method(method).unedited or (run_dir / "edit" / "jola_weights.safetensors").is_file()


def rescore_generation(
    model, cell: Cell, out: Path, config, *, edit_dir: Path | None = None, provenance: dict | None = None
) -> dict:
    """Score a main-table run's edit with the generation protocol on the same test items.

    ``edit_dir``: where the edit is (default: the main run's own ``edit/``); ``provenance`` is
    recorded in ``gen_result.json`` when the edit comes from a retrained copy of the run.
    """
    from jolalens import load_edit
    from jolalens.evaluate import Protocol, evaluate
    from jolalens.methods import get_method
    from jolalens.tasks import load_task_splits

    run_dir = Cell("main", cell.task, cell.method, cell.seed).run_dir(out)
    splits = load_task_splits(cell.task, n_train=0, n_valid=0, n_test=config.n_test, seed=cell.seed)
    edit = None if get_method(cell.method).unedited else load_edit(edit_dir or run_dir / "edit", model)
    result = evaluate(
        model,
        splits.test,
        cell.task,
        edit=edit,
        protocol=Protocol.GEN,
        style=config.train.prompt_style,
        max_length=config.train.max_length,
        progress=False,
    )
    result.items.drop(columns=["instruction"], errors="ignore").to_csv(run_dir / "gen_test_items.csv.gz", index=False)
    row = {
        "task": cell.task,
        "method": cell.method,
        "seed": cell.seed,
        "protocol": "gen",
        "accuracy": float(result.summary["accuracy"]),
        "n_test": len(splits.test),
        "unparsed": float(result.summary["unparsed"]),
        "eval_seconds": round(float(result.summary["seconds"]), 1),
        "device": str(next(model.parameters()).device),
        **(provenance or {}),
    }
    tmp = run_dir / ".gen_result.json.tmp"
    tmp.write_text(json.dumps(row, indent=2) + "\n")
    tmp.replace(run_dir / "gen_result.json")
    return row


def reextract_generation(run_dir: Path, task: str, test: list) -> tuple[float, float] | None:
    """Read the answers of a run's stored generations again with the current extractor.

    The generated text is kept per item, so a change to ``extract_answer`` needs no GPU: the
    predictions, ``correct`` and ``gen_result.json`` are rewritten in place. ``test``: the task's
    test examples the run was scored on. Returns the accuracy before and after, or None when the
    run has no stored generations.
    """
    import pandas as pd

    from jolalens.evaluate import extract_answer

    path, result_path = run_dir / "gen_test_items.csv.gz", run_dir / "gen_result.json"
    if not (path.is_file() and result_path.is_file()):
        return None
    items = pd.read_csv(
        path, dtype={"answer": str, "output": str, "prediction": str}, keep_default_na=False, na_values=[""]
    )
    if len(items) != len(test) or list(items["answer"].astype(str)) != [ex.answer for ex in test]:
        raise ValueError(
            f"{path}: its items are not the first {len(test)} test items of {task}; rescore it on a GPU instead"
        )
    outputs = items["output"].fillna("").astype(str)
    predictions = [extract_answer(o, task, ex.choices) for o, ex in zip(outputs, test, strict=True)]
    row = json.loads(result_path.read_text())
    before = float(row["accuracy"])
    stored = [None if pd.isna(p) else p for p in items["prediction"]]
    if stored == predictions and "unparsed" in row:
        return before, before  # unchanged: leave the files (and their gzip timestamps) alone
    items["prediction"] = predictions
    items["correct"] = [p is not None and p == ex.answer for p, ex in zip(predictions, test, strict=True)]
    row.update(
        accuracy=float(items["correct"].mean()), unparsed=float(sum(p is None for p in predictions) / len(items))
    )
    if stored != predictions:
        items.to_csv(path, index=False)
    result_path.write_text(json.dumps(row, indent=2) + "\n")
    return before, row["accuracy"]


def score_generation(model, cell: Cell, out: Path, config, log) -> dict:
    """A ``gen`` cell: re-score the main run's edit, retraining it (group ``rerun``) if not kept."""
    from jolalens.compare import run_compare

    main_dir = Cell("main", cell.task, cell.method, cell.seed).run_dir(out)
    if edit_kept(main_dir, cell.method):
        return rescore_generation(model, cell, out, config)
    again = Cell("rerun", cell.task, cell.method, cell.seed)
    if not (again.run_dir(out) / "result.json").is_file():
        log(f"  {main_dir} kept no weights: retraining it as {again.key}")
        run_compare(model, config, out / "rerun", log=log)
        compress_items(again.run_dir(out))
    if not edit_kept(again.run_dir(out), cell.method):
        raise FileNotFoundError(f"{again.run_dir(out)} has no edit weights either; delete that run to retrain it")
    main_score = json.loads((main_dir / "result.json").read_text())["score"]
    rerun_score = json.loads((again.run_dir(out) / "result.json").read_text())["score"]
    provenance = {
        "edit_from": f"rerun/runs/{cell.task}/{cell.method}/seed{cell.seed}",
        "loglik_score_main": main_score,
        "loglik_score_rerun": rerun_score,
    }
    return rescore_generation(model, cell, out, config, edit_dir=again.run_dir(out) / "edit", provenance=provenance)


def _keep(path: Path) -> bool:
    """Results, logs and edits under 300 kB travel: JoLA's, ITI's, LoFiT's and RED's, not BitFit's
    (620 kB) or LoRA's (1.8 MB), which are scored with both protocols where they were trained."""
    if path.name.endswith(".tmp"):
        return False
    return path.stat().st_size < (KEEP_EDIT_BYTES if path.suffix == ".safetensors" else 4_000_000)


SNAPSHOT_PART_BYTES = 14 * 2**20  # the lease tool returns files of at most 16 MiB each ...
SNAPSHOT_MAX_PARTS = 7  # ... and at most 8 files: the parts and stage2.sh's grid.log


def file_stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``out``, by relative path.

    Taken when a run starts, it names what the machine already had (the committed results), which
    a snapshot need not send back."""
    stamps = {}
    for path in out.rglob("*"):
        if path.is_file():
            stat = path.stat()
            stamps[str(path.relative_to(out))] = (stat.st_size, stat.st_mtime_ns)
    return stamps


def snapshot(out: Path, dest: Path, since: dict[str, tuple[int, int]] | None = None) -> list[Path]:
    """Tarballs ``results-01.tgz``, ``results-02.tgz``, ... of what finished since ``since`` was taken.

    Only new or changed files are packed, in parts of at most ``SNAPSHOT_PART_BYTES`` (a lease
    returns files of at most 16 MiB: a single tarball of every result outgrew that on 2026-11-28
    and the run's results were lost). Runs without ``result.json`` are left out (but for an
    ``error.txt``): the grid redoes them anyway. Returns the parts written."""
    dest.mkdir(parents=True, exist_ok=True)
    since = since or {}
    members: list[tuple[Path, int]] = []  # with the size, read once
    for group in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "claims"):
        unfinished = {r for r in group.glob("runs/*/*/seed*") if not (r / "result.json").is_file()}
        for path in sorted(group.rglob("*")):
            if not (path.is_file() and _keep(path)):
                continue
            if path.name != "error.txt" and unfinished.intersection(path.parents):
                continue  # a run the deadline cut short is redone from scratch; only its error comes back
            stat = path.stat()
            if since.get(str(path.relative_to(out))) == (stat.st_size, stat.st_mtime_ns):
                continue  # the machine had it when the run started
            members.append((path, stat.st_size))
    parts: list[list[Path]] = [[]]
    size = 0
    for path, file_size in members:
        cost = file_size + 1024  # the tar header and padding, rounded up
        if parts[-1] and size + cost > SNAPSHOT_PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(path)
        size += cost
    if len(parts) > SNAPSHOT_MAX_PARTS:
        print(
            f"snapshot: {len(parts)} parts of {SNAPSHOT_PART_BYTES >> 20} MiB exceed the {SNAPSHOT_MAX_PARTS} "
            "files a lease returns; the last ones will not come back (run fewer cells per call)",
            file=sys.stderr,
        )
    written = []
    for i, part in enumerate(parts, start=1):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in part:
                tar.add(path, arcname=str(path.relative_to(out)))
        target = dest / f"results-{i:02d}.tgz"
        tmp = dest / f".{target.name}.tmp"
        tmp.write_bytes(buf.getvalue())
        tmp.replace(target)
        written.append(target)
    for stale in set(dest.glob("results-*.tgz")) - set(written):
        stale.unlink()  # a part left from an earlier snapshot with more parts
    return written


def tables(out: Path) -> None:
    from jolalens.compare import write_tables

    for group_dir in sorted(p for p in out.iterdir() if (p / "compare_config.json").is_file()):
        if not any((group_dir / "runs").rglob("result.json")):
            continue  # a group with no finished run yet gets no empty table
        write_tables(group_dir)
        print(f"{group_dir}/summary.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--address", default=None, help="an existing Ray cluster (e.g. auto); default: start a local one"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument("--cpus-per-cell", type=float, default=1.0)
    parser.add_argument(
        "--gpus-per-cell", type=float, default=0.0, help="GPU share of a cell, e.g. 0.08: 12 cells per GPU (0: CPU)"
    )
    parser.add_argument("--max-retries", type=int, default=2, help="reruns of a cell whose worker died")
    parser.add_argument("--eval-batch-size", type=int, default=8, help="speed only; not part of the protocol")
    parser.add_argument("--snapshot", type=Path, default=None)
    parser.add_argument("--only", default=None, help="comma-separated groups (main, gen, nlu, nlg, datasize_n200, ...)")
    parser.add_argument(
        "--methods", default=None, help="comma-separated methods (zeroshot, jola, ...): only their cells"
    )
    parser.add_argument(
        "--tasks", default=None, help="comma-separated tasks (openbookqa, mmlu_law, ...): only their cells"
    )
    parser.add_argument(
        "--skip",
        default=None,
        help="comma-separated cell keys or shell patterns to leave out, e.g. 'main__piqa__*' (see --plan)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (8 examples, 1 epoch) to check the machinery")
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="TF32 matrix products on a GPU (recorded in the run's logs/<run>/invocation.json)",
    )
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--tables", action="store_true")
    parser.add_argument(
        "--check-data",
        action="store_true",
        help="exit 2, naming them, if the selected cells' tasks are not all cached here",
    )
    parser.add_argument(
        "--reextract",
        action="store_true",
        help="read the stored generations' answers again with the current extractor (no model needed)",
    )
    args = parser.parse_args()
    args.only = None if args.only is None else set(args.only.split(","))
    args.methods = None if args.methods is None else set(args.methods.split(","))
    args.tasks = None if args.tasks is None else set(args.tasks.split(","))
    args.skip = () if not args.skip else tuple(args.skip.split(","))
    keys = [c.key for c in plan()]
    unmatched = [pat for pat in args.skip if not any(fnmatch.fnmatchcase(k, pat) for k in keys)]
    if unmatched:
        parser.error(
            f"--skip: {unmatched} match no cell of the plan; cell keys look like main__piqa__red__seed1 (--plan lists "
            "them)"
        )
    for name, given, field in (
        ("--only", args.only, "group"),
        ("--methods", args.methods, "method"),
        ("--tasks", args.tasks, "task"),
    ):
        known = {getattr(c, field) for c in plan()}
        if given and not given <= known:
            parser.error(f"{name}: unknown {sorted(given - known)}; choose from {sorted(known)}")
    if args.plan:
        cells = selected(args.only, args.methods, args.tasks, args.skip)
        counts: dict[str, list[int]] = {}
        for i, c in enumerate(cells):
            done = _done(c, args.out)
            counts.setdefault(c.group, [0, 0])[0] += done
            counts[c.group][1] += 1
            print(f"{i:4d} {c.key}{'  (done)' if done else ''}")
        print(
            "done: "
            + ", ".join(f"{g} {d}/{n}" for g, (d, n) in counts.items())
            + f"; all {sum(d for d, _ in counts.values())}/{len(cells)}"
        )
        return 0
    if args.tables:
        tables(args.out)
        return 0
    if args.check_data:
        missing = uncached_tasks(selected(args.only, args.methods, args.tasks, args.skip))
        if missing:
            print(
                f"tasks not cached here: {', '.join(missing)}. Load each once to cache it, e.g. python -c "
                f"\"from jolalens.tasks import load_task_splits; load_task_splits('{missing[0]}', n_train=0, "
                f'n_valid=0, n_test=1)"; it names any archive it lacks and how to fetch it.',
                file=sys.stderr,
            )
            return 2
        print("every task of the selected cells is cached")
        return 0
    if args.reextract:
        from jolalens.tasks import load_task_splits

        n_test, tests = group_config("main").n_test, {}
        for run_dir in sorted(args.out.glob("main/runs/*/*/seed*")):
            task = run_dir.parent.parent.name
            if task not in tests:
                tests[task] = load_task_splits(task, n_train=0, n_valid=0, n_test=n_test).test
            change = reextract_generation(run_dir, task, tests[task])
            if change is not None:
                print(f"{run_dir.relative_to(args.out)}: {100 * change[0]:.1f} -> {100 * change[1]:.1f}")
        return 0
    return run_grid(args)


def group_runs(
    cells: list[Cell], *, smoke: bool = False, eval_batch_size: int = 8
) -> list[tuple[str, object, set[tuple[str, str, int]]]]:
    """The ``jolalens compare --engine ray`` call of each group the cells touch: (group, its
    CompareConfig, the (task, method, seed) cells of it to run), groups in plan order; ``gen``
    cells are not compare runs and are left out."""
    groups = list(dict.fromkeys(c.group for c in cells if c.group != "gen"))
    return [
        (
            g,
            group_config(g, smoke=smoke, eval_batch_size=eval_batch_size),
            {(c.task, c.method, c.seed) for c in cells if c.group == g},
        )
        for g in groups
    ]


def use_tf32() -> None:
    """Ray worker set-up of ``--tf32``: fp32 weights, TF32 matrix products (~4x the fp32 rate of an H100)."""
    import torch

    torch.set_float32_matmul_precision("high")


def _snapshots(out: Path, dest: Path, since: dict, stop: threading.Event) -> None:
    while not stop.wait(30):
        snapshot(out, dest, since)


def _run_groups_then_gen(args: argparse.Namespace, cells: list[Cell], engine, device: str, log) -> None:
    """Each group's cells through ``jolalens compare --engine ray``, then the ``gen`` re-scoring here."""
    from functools import partial

    from jolalens import load_model
    from jolalens.engines.ray_engine import run_compare_ray, start_ray

    out: Path = args.out
    started = start_ray(engine)
    try:
        factory = partial(load_model, device=device, dtype="float32")  # the grid is float32
        for group, config, todo in group_runs(cells, smoke=args.smoke, eval_batch_size=args.eval_batch_size):
            print(f"{group}: {len(todo)} cell(s)")
            run_compare_ray(factory, config, out / group, engine, only=todo, log=log)
            for task, method, seed in todo:
                compress_items(Cell(group, task, method, seed).run_dir(out))
    finally:
        if started:
            import ray

            ray.shutdown()
    gen = [c for c in cells if c.group == "gen" and _ready(c, out) and not _done(c, out)]
    if gen:  # the main runs' edits with the generation protocol, one after another in this process
        model = load_model(device=device, dtype="float32")
        for cell in gen:
            config = replace(
                group_config("main", smoke=args.smoke, eval_batch_size=args.eval_batch_size),
                methods=(cell.method,),
                tasks=(cell.task,),
                seeds=(cell.seed,),
            )
            try:
                row = score_generation(model, cell, out, config, log)
                log(f"done {cell.key}: gen accuracy {row['accuracy']:.3f}")
            except Exception as exc:  # noqa: BLE001 - a broken cell is logged and left for the next invocation
                log(f"FAILED {cell.key}: {type(exc).__name__}: {exc}")


def run_grid(args: argparse.Namespace) -> int:
    """The selected cells (:func:`_run_groups_then_gen`), snapshots while they run, then the tables."""
    import torch

    from jolalens import load_model
    from jolalens.engines.ray_engine import RayEngineConfig

    out: Path = args.out
    t0 = time.time()
    check_methods()
    cells = selected(args.only, args.methods, args.tasks, args.skip)
    device = "cuda" if args.gpus_per_cell > 0 else "cpu"
    engine = RayEngineConfig(
        address=args.address,
        num_cpus=args.num_cpus,
        cpus_per_cell=args.cpus_per_cell,
        gpus_per_cell=args.gpus_per_cell,
        max_retries=args.max_retries,
        worker_setup="benchmarks.paper_grid.use_tf32" if args.tf32 else None,
    )
    load_model()  # converts the embedded GGUF once, before the workers race for it
    log_dir = out / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-ray-{os.getpid()}"
    log_dir.mkdir(parents=True)
    machine = {
        "command": "python benchmarks/paper_grid.py " + " ".join(sys.argv[1:]),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "device": device,
        "torch": torch.__version__,
        "engine": "ray",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tf32": bool(args.tf32),
        "cpus_per_cell": args.cpus_per_cell,
        "gpus_per_cell": args.gpus_per_cell,
    }
    (log_dir / "invocation.json").write_text(json.dumps(machine, indent=2) + "\n")
    since = file_stamps(out) if args.snapshot else {}  # the snapshots send back only what is new
    stop = threading.Event()
    if args.snapshot:
        threading.Thread(target=_snapshots, args=(out, args.snapshot, since, stop), daemon=True).start()
    with open(log_dir / "grid.log", "a") as log_file:

        def log(msg: str) -> None:
            log_file.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
            log_file.flush()

        try:  # a deadline's SIGINT (timeout -s INT) still leaves the tables and a last snapshot
            _run_groups_then_gen(args, cells, engine, device, log)
        finally:
            stop.set()
            tables(out)
            if args.snapshot:
                snapshot(out, args.snapshot, since)
    done = sum(_done(c, out) for c in cells)
    print(f"{done}/{len(cells)} cells done after {time.time() - t0:.0f} s (log: {log_dir / 'grid.log'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
