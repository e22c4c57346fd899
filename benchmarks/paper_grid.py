"""The paper's comparison grid (issue #7): its cells, run as ``jolalens compare --engine ray`` calls.

Every cell is one ``jolalens compare`` run (task, method, seed) in one of the groups that share a
protocol: ``cloze`` (issue 39: the 8 commonsense tasks scored as lm-evaluation-harness does, the 7
methods plus LoReFT and RePE, 3 seeds, and the 4 JoLA ablations), ``cloze_gemma`` (zero-shot,
JoLA, RED and ITI on Gemma-3-270M, seed 0), ``main`` (the label format: 8 commonsense tasks, the 7
methods and the 4 JoLA ablations), ``nlu`` (MMLU domains), ``nlg`` (GEM tasks, generation
protocol), ``datasize`` (50-1000 training examples) and ``gen`` (the main table's kept edits
re-scored with the generation protocol). The paper's sizes
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
import json
import os
import platform
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the grid's definition, what is done with a finished run, the snapshots (re-exported: callers import them here)
from paper_grid_cells import (  # noqa: E402
    ABLATION_TASKS,
    ABLATIONS,
    BASELINES,
    CLOZE_METHODS,
    COMMONSENSE,
    DATASIZE_METHODS,
    DATASIZE_TASKS,
    DATASIZES,
    GEM,
    GEMMA_METHODS,
    MMLU,
    SEED_ORDER,
    SEEDS,
    Cell,
    _done,
    _ready,
    check_methods,
    group_config,
    group_model,
    group_runs,
    plan,
    selected,
    uncached_tasks,
)
from paper_grid_gen import (  # noqa: E402
    compress_items,
    edit_kept,
    reextract_generation,
    rescore_generation,
    score_generation,
)
from paper_grid_snapshot import (  # noqa: E402
    KEEP_EDIT_BYTES,
    SNAPSHOT_MAX_PARTS,
    SNAPSHOT_PART_BYTES,
    file_stamps,
    snapshot,
)

__all__ = [
    "ABLATIONS",
    "ABLATION_TASKS",
    "BASELINES",
    "CLOZE_METHODS",
    "COMMONSENSE",
    "DATASIZES",
    "DATASIZE_METHODS",
    "DATASIZE_TASKS",
    "GEM",
    "GEMMA_METHODS",
    "KEEP_EDIT_BYTES",
    "MMLU",
    "OUT",
    "SEEDS",
    "SEED_ORDER",
    "SNAPSHOT_MAX_PARTS",
    "SNAPSHOT_PART_BYTES",
    "Cell",
    "check_methods",
    "compress_items",
    "edit_kept",
    "file_stamps",
    "group_config",
    "group_model",
    "group_runs",
    "main",
    "plan",
    "reextract_generation",
    "rescore_generation",
    "run_grid",
    "score_generation",
    "selected",
    "snapshot",
    "tables",
    "uncached_tasks",
    "use_tf32",
]

OUT = Path(__file__).parent / "results" / "paper_grid"


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
        for group, config, todo in group_runs(cells, smoke=args.smoke, eval_batch_size=args.eval_batch_size):
            print(f"{group}: {len(todo)} cell(s)")
            factory = partial(load_model, group_model(group), device=device, dtype="float32")  # the grid is float32
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
