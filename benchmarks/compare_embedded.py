"""JoLA against every baseline on the embedded model: `jolalens compare` with a CPU-sized budget.

Writes ``benchmarks/results/compare_embedded/`` (per-run ``result.json``, ``results.csv``,
``summary.csv``, ``summary.md``). Resumable: rerun the same command and finished runs are
skipped, so the grid can grow seed by seed and task by task. Usage::

    python benchmarks/compare_embedded.py                       # arc_easy, seed 0
    python benchmarks/compare_embedded.py --tasks arc_easy,piqa --seeds 0,1,2

The budget (100 train / 50 valid, 5 epochs, 2 hyper-parameter points per method, 300 test items)
is smaller than the paper's 200 / 200 / 20 epochs so that one method x task x seed fits in
minutes on a 2-core CPU; ``--paper`` switches to the paper's sizes (hours per cell on a CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from jolalens.cli import main as cli

OUT = Path(__file__).parent / "results" / "compare_embedded"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="arc_easy")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default="jola,iti,red,lofit,lora,bitfit,zeroshot")
    parser.add_argument("--paper", action="store_true", help="200/200 examples, 20 epochs, 500 test items")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sizes = (["--n-train", "200", "--n-valid", "200", "--n-test", "500", "--epochs", "20"] if args.paper
             else ["--n-train", "100", "--n-valid", "50", "--n-test", "300", "--epochs", "5"])
    out = args.out if not args.paper else args.out.with_name(args.out.name + "_paper")
    argv = ["compare", "--methods", args.methods, "--tasks", args.tasks, "--seeds", args.seeds,
            "--out", str(out), "--budget", "2", "--no-progress", *sizes]
    t0 = time.perf_counter()
    code = cli(argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "machine.json").write_text(json.dumps({
        "command": "python benchmarks/compare_embedded.py " + " ".join(sys.argv[1:]),
        "cli": "jolalens " + " ".join(argv),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": __import__("os").cpu_count(),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "last_invocation_seconds": round(time.perf_counter() - t0, 1),
    }, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
