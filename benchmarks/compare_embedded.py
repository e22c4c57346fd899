"""JoLA against every baseline on the embedded model: `jolalens compare` with a CPU-sized budget.

Writes ``benchmarks/results/compare_embedded/`` (per-run ``result.json``, ``results.csv``,
``summary.csv``, ``summary.md``) and the comparison figures of seed 0 to
``figures/compare_embedded/`` (test accuracy per method, where the head-level methods edit, the
Jaccard of their head sets, JoLA beside mean-ablation attribution scores). Resumable: rerun the
same command and finished runs are skipped, so the grid can grow seed by seed and task by task.
Usage::

    python benchmarks/compare_embedded.py                       # arc_easy, seed 0
    python benchmarks/compare_embedded.py --tasks arc_easy,piqa --seeds 0,1,2

The budget (64 train / 32 valid, 4 epochs with 5 warm-up steps, 2 hyper-parameter points per
method, 200 test items) is far below the paper's 200 / 200 / 20 epochs so that the seven methods
on one task and seed fit in about an hour on a 2-core CPU; ``--paper`` switches to the paper's
sizes and 50 warm-up steps (hours per cell on a CPU; meant for a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from jolalens import TrainConfig, load_model
from jolalens.analysis import attribution_scores, make_compare_figures
from jolalens.compare import CompareConfig, run_compare
from jolalens.methods import METHODS, default_methods
from jolalens.tasks import load_task_splits

OUT = Path(__file__).parent / "results" / "compare_embedded"
FIGURES = Path(__file__).parents[1] / "figures" / "compare_embedded"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="arc_easy")
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--methods",
        default=",".join(default_methods()),
        help=f"comma-separated, from {','.join(METHODS)} (default: jolalens compare's default methods)",
    )
    parser.add_argument("--paper", action="store_true", help="200/200 examples, 20 epochs, 500 test items")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--figures", type=Path, default=FIGURES)
    args = parser.parse_args()
    sizes = (
        dict(n_train=200, n_valid=200, n_test=500, epochs=20, warmup=50)
        if args.paper
        else dict(n_train=64, n_valid=32, n_test=200, epochs=4, warmup=5)
    )
    out = args.out if not args.paper else args.out.with_name(args.out.name + "_paper")
    tasks = tuple(t for t in args.tasks.split(",") if t)
    config = CompareConfig(
        methods=tuple(args.methods.split(",")),
        tasks=tasks,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        n_train=sizes["n_train"],
        n_valid=sizes["n_valid"],
        n_test=sizes["n_test"],
        budget=2,
        train=TrainConfig(epochs=sizes["epochs"], warmup_steps=sizes["warmup"], progress=False),
    )
    t0 = time.perf_counter()
    model = load_model()
    results = run_compare(model, config, out)
    (out / "machine.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/compare_embedded.py " + " ".join(sys.argv[1:]),
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "cpus": os.cpu_count(),
                "cuda": torch.cuda.is_available(),
                "torch": torch.__version__,
                "last_invocation_seconds": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
        + "\n"
    )
    # Figures for seed 0 of each task: scores, head maps, head-set agreement, JoLA vs attribution.
    for task in tasks:
        if not (out / "runs" / task / "jola" / "seed0" / "result.json").is_file():
            continue
        splits = load_task_splits(task, n_train=sizes["n_train"], n_valid=sizes["n_valid"], n_test=0, seed=0)
        scores = attribution_scores(model, splits.valid, ablation="mean", reference=splits.train, progress=False)
        for path in make_compare_figures(out, task, args.figures, model=model, scores=scores):
            print(path)
    failed = int((results["status"] == "failed").sum()) if "status" in results else 0
    print((out / "summary.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
