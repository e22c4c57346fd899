"""Choose the demo's task and budget on VALIDATION data only (cloze protocol, embedded model).

For each candidate task: the validation draw is split into an early-stopping part (given to
training) and a held-out selection part; the script reports zero-shot and JoLA acc / acc_norm
on the selection part, and the wall time. No test item is read. Output: runs/demo_choice/*.json

    OMP_NUM_THREADS=2 python benchmarks/demo_choice.py --tasks arc_easy,piqa --n-train 200 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jolalens.evaluate import evaluate
from jolalens.jola import JolaConfig
from jolalens.models import load_model
from jolalens.tasks import load_task_splits
from jolalens.train import SparsityConfig, TrainConfig, train_jola


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="arc_easy,piqa,hellaswag")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-stop", type=int, default=50, help="validation items for early stopping")
    ap.add_argument("--n-select", type=int, default=300, help="held-out validation items that score the choice")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--lam", type=float, default=SparsityConfig().lam)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=Path("runs/demo_choice"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model()
    for task in args.tasks.split(","):
        t0, c0 = time.perf_counter(), time.process_time()
        splits = load_task_splits(
            task, n_train=args.n_train, n_valid=args.n_stop + args.n_select, n_test=0, seed=args.seed, protocol="cloze"
        )
        stop, select = splits.valid[: args.n_stop], splits.valid[args.n_stop :]
        zs = evaluate(model, select, task, protocol="cloze", progress=False).summary
        t1, c1 = time.perf_counter(), time.process_time()
        result = train_jola(
            model,
            splits.train,
            stop,
            jola=JolaConfig(seed=args.seed),
            config=TrainConfig(
                lr=args.lr,
                epochs=args.epochs,
                warmup_steps=2,
                seed=args.seed,
                patience=args.epochs,
                prompt_style="cloze",
                progress=False,
            ),
            sparsity=SparsityConfig(lam=args.lam),
        )
        t2, c2 = time.perf_counter(), time.process_time()
        jo = evaluate(model, select, task, edit=result.edit, protocol="cloze", progress=False).summary
        row = {
            "task": task,
            "n_train": len(splits.train),
            "n_stop": len(stop),
            "n_select": len(select),
            "epochs": args.epochs,
            "lr": args.lr,
            "lam": args.lam,
            "best_epoch": result.best_epoch,
            "zeroshot_acc": zs["accuracy"],
            "zeroshot_acc_norm": zs["acc_norm"],
            "jola_acc": jo["accuracy"],
            "jola_acc_norm": jo["acc_norm"],
            "closed_fraction": result.summary()["closed_fraction"],
            "eval_seconds_per_pass": round(t1 - t0, 1),
            "train_seconds": round(t2 - t1, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
            # CPU seconds (all threads): on a loaded shared box they, not wall time, extrapolate to an idle one
            "eval_cpu_seconds_per_item": round((c1 - c0) / len(select), 3),
            "train_cpu_seconds_per_example_epoch": round((c2 - c1) / (len(splits.train) * args.epochs), 3),
            "total_cpu_seconds": round(time.process_time() - c0, 1),
        }
        print(json.dumps(row), flush=True)
        (args.out / f"{task}_n{args.n_train}_e{args.epochs}_lr{args.lr}.json").write_text(
            json.dumps(row, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
