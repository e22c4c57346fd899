"""Time true mean-ablation of every head of the embedded model on ARC-Easy cloze items.

One ``ablation_scores`` call (mean ablation, reference = the train items) in this process;
prints one JSON line with CPU seconds (``time.process_time``: the box is shared), wall seconds,
peak resident memory and a checksum of the scores, and saves the scores with ``--save`` so that
two runs (before and after a change) can be compared number by number.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/ablation_speed.py --n-items 16
    ... --no-accuracy          # only the log-prob metric: gold rows only
    ... --full-forward         # the reference path: every pass runs all layers, unembeds every kept position
    ... --compare a.pt b.pt    # max |difference| of two saved runs' scores

``--no-accuracy`` and ``--full-forward`` are passed to ``ablation_scores`` only when given, so
the script also times versions of jolalens without those options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

log = logging.getLogger("ablation_speed")


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Largest absolute differences between two saved :class:`HeadScores`."""
    from jolalens.analysis import HeadScores

    x, y = HeadScores.load(a), HeadScores.load(b)
    out: dict[str, Any] = {
        "logprob_drop_max_abs_diff": float((x.logprob_drop - y.logprob_drop).abs().max()),
        "clean_logprob_diff": abs(x.clean_logprob - y.clean_logprob),
    }
    if x.accuracy_drop is not None and y.accuracy_drop is not None:
        out["accuracy_drop_max_abs_diff"] = float((x.accuracy_drop - y.accuracy_drop).abs().max())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--n-items", type=int, default=16, help="scored items (the test split)")
    parser.add_argument("--n-train", type=int, default=50, help="reference items the mean is taken over")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--heads-per-pass", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-accuracy", action="store_true", help="pass accuracy=False (gold rows only)")
    parser.add_argument("--full-forward", action="store_true", help="pass full_forward=True (no HF-view shortcuts)")
    parser.add_argument("--save", type=Path, default=None, help="save the HeadScores here")
    parser.add_argument("--compare", type=Path, nargs=2, default=None, help="compare two saved runs and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.compare:
        print(json.dumps(compare(*args.compare)))
        return 0

    torch.set_num_threads(args.threads)
    import jolalens
    from jolalens.analysis import ablation_scores
    from jolalens.data import PromptStyle
    from jolalens.tasks import load_task_splits

    model = jolalens.load_model()
    splits = load_task_splits(args.task, n_train=args.n_train, n_valid=0, n_test=args.n_items, seed=0, protocol="cloze")
    extra: dict[str, Any] = {}
    if args.no_accuracy:
        extra["accuracy"] = False
    if args.full_forward:
        extra["full_forward"] = True
    cpu0, wall0 = time.process_time(), time.perf_counter()
    scores = ablation_scores(
        model,
        splits.test,
        ablation="mean",
        reference=splits.train,
        style=PromptStyle.CLOZE,
        batch_size=args.batch_size,
        heads_per_pass=args.heads_per_pass,
        **extra,
    )
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if args.save:
        scores.save(args.save)
    record = {
        "task": args.task,
        "n_items": len(splits.test),
        "n_reference": len(splits.train),
        "batch_size": args.batch_size,
        "heads_per_pass": args.heads_per_pass,
        "threads": args.threads,
        "options": extra,
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "clean_logprob": scores.clean_logprob,
        "clean_accuracy": scores.clean_accuracy,
        "sum_abs_logprob_drop": float(scores.logprob_drop.abs().sum()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # model loading included
        "machine": f"{platform.machine()} {os.cpu_count()} cores, python {sys.version.split()[0]}",
        "torch": torch.__version__,
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
