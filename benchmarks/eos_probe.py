"""Does training the end-of-sequence token make JoLA's edits answer under the generation protocol?

The #7 grid trains each edit on the label alone, as the paper does (no EOS; spec B6). Under
beam search those edits then copy the prompt's format line ("answer1/answer2/answer3/answer4")
on six of the eight commonsense tasks, and score ~0 by generation while their log-likelihood
accuracy is intact. This probe retrains one grid cell (JoLA, seed 0) with ``answer_eos=True``
and otherwise the grid's exact settings, scores it with both protocols on the same test items,
and sets it beside the grid's own cell.

    python benchmarks/eos_probe.py --task openbookqa --device cpu --threads 1

``--budget 1`` (the default) tries only the search's first point, lr 5e-3, which the grid's
seed-0 search also chose for OBQA; ``--budget 2`` runs the grid's full search. Writes
``benchmarks/results/eos_probe/<task>_budget<budget>/`` (the run, ``summary.json``, ``summary.md``);
rerunning resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from paper_grid import OUT as GRID  # noqa: E402
from paper_grid import Cell, compress_items, group_config, rescore_generation  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "eos_probe"


def cell_summary(run_dir: Path, task: str) -> dict:
    """Both protocols' accuracy of a run, with the shares of generated lines holding no answer
    and listing two or more labels."""
    import pandas as pd

    from jolalens.evaluate import labels_named

    result = json.loads((run_dir / "result.json").read_text())
    gen = json.loads((run_dir / "gen_result.json").read_text())
    items = pd.read_csv(
        run_dir / "gen_test_items.csv.gz",
        dtype={"output": str, "prediction": str},
        keep_default_na=False,
        na_values=[""],
    )
    outputs = items["output"].fillna("").astype(str)
    top = items["prediction"].value_counts()
    return {
        "loglik_accuracy": result["score"],
        "gen_accuracy": gen["accuracy"],
        "no_answer": float(items["prediction"].isna().mean()),
        "listing": float(sum(len(labels_named(o, task)) > 1 for o in outputs) / len(items)),
        "most_written": {str(k): int(v) for k, v in top.head(3).items()},
        "hyperparameters": result["hyperparameters"],
        "val_ce": result["val_ce"],
        "best_epoch": result["info"].get("best_epoch"),
        "closed_fraction": result["info"].get("closed_fraction"),
        "device": result["device"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="openbookqa")
    parser.add_argument("--budget", type=int, default=1, help="search points (the grid's order); the grid used 2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-batch-size", type=int, default=32, help="as the grid's runs")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/eos_probe/<task>_budget<budget>"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (8 examples, 1 epoch) to check the script")
    args = parser.parse_args()

    import torch

    from jolalens import load_model
    from jolalens.compare import run_compare

    torch.set_num_threads(args.threads)
    args.out = args.out or OUT / f"{args.task}_budget{args.budget}"
    grid_cell = Cell("main", args.task, "jola", 0).run_dir(GRID)
    if not (grid_cell / "gen_result.json").is_file():
        parser.error(f"the grid's cell {grid_cell} has no generation-protocol result to compare with")
    base = group_config("main", smoke=args.smoke, eval_batch_size=args.eval_batch_size)
    config = replace(
        base,
        methods=("jola",),
        tasks=(args.task,),
        seeds=(0,),
        budget=args.budget,
        train=replace(base.train, answer_eos=True),
    )
    model = load_model(device=args.device, dtype="float32")
    t0 = time.perf_counter()
    run_compare(model, config, args.out / "main")
    run_dir = Cell("main", args.task, "jola", 0).run_dir(args.out)
    if not (run_dir / "gen_result.json").is_file():
        rescore_generation(model, Cell("gen", args.task, "jola", 0), args.out, config)
    compress_items(run_dir)
    summary = {
        "task": args.task,
        "budget": args.budget,
        "seconds": round(time.perf_counter() - t0),
        "command": "python benchmarks/eos_probe.py " + " ".join(sys.argv[1:]),
        "with_eos": cell_summary(run_dir, args.task),
        "grid_without_eos": cell_summary(grid_cell, args.task),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = [("JoLA, the grid's cell (no EOS)", summary["grid_without_eos"]), ("JoLA, EOS trained", summary["with_eos"])]
    lines = [
        f"# JoLA on {args.task}, seed 0: training the end-of-sequence token",
        "",
        f"`{summary['command']}`; the same {config.n_test} test items, data, seed and settings as the grid "
        f"(except the EOS token); {summary['seconds']} s.",
        "",
        "| run | lr | best epoch | log-likelihood accuracy % | generation accuracy % | no answer % | lists labels % | "
        "most written | device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['hyperparameters'].get('lr')} | {r['best_epoch']} | {100 * r['loglik_accuracy']:.1f} | "
            f"{100 * r['gen_accuracy']:.1f} | {100 * r['no_answer']:.0f} | {100 * r['listing']:.0f} | "
            f"{', '.join(f'{k} ({v})' for k, v in r['most_written'].items())} | {r['device']} |"
        )
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
