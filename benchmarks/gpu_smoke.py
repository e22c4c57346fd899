"""Every method of ``jolalens compare`` once on a tiny random model on a given device.

A minute-long check to run on a lent GPU before a long job there: it trains, saves, reloads and
scores the edit of every method in the registry (``jolalens.methods.METHODS``: JoLA, its
ablations and the baselines) with both protocols, on the device, and fails loudly on the first
device mismatch. Usage::

    python benchmarks/gpu_smoke.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jolalens.tasks
from jolalens import Example, TrainConfig, load_edit
from jolalens.compare import CompareConfig, run_compare
from jolalens.evaluate import Protocol, evaluate
from jolalens.methods import METHODS
from jolalens.testing import choice_splits, tiny_model

_splits = choice_splits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = tiny_model(seed=0, device=args.device)
    jolalens.tasks.load_task_splits = _splits  # a synthetic task: no data files needed
    train = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, progress=False, max_length=64)
    config = CompareConfig(
        methods=tuple(METHODS), tasks=("arc_easy",), seeds=(0,), n_train=9, n_valid=6, n_test=6, budget=1, train=train
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = run_compare(model, config, Path(tmp) / "cmp", log=lambda s: None)
        failed = results[results["status"] != "done"]
        for row in failed.itertuples():
            print(
                f"FAILED {row.method}:\n"
                + (Path(tmp) / "cmp" / "runs" / "arc_easy" / row.method / "seed0" / "error.txt").read_text()
            )
        print(results[["method", "status", "score", "device"]].to_string(index=False))
        examples = [Example(f"say {c}", c) for c in "abcd"]
        for method, spec in METHODS.items():
            if method in set(failed["method"]):
                continue  # reported above
            path = Path(tmp) / "cmp" / "runs" / "arc_easy" / method / "seed0" / "edit"
            edit = None if spec.unedited else load_edit(path, model)
            gen = evaluate(
                model, examples, "common_gen", edit=edit, protocol=Protocol.GEN, max_new_tokens=4, progress=False
            )
            mc = evaluate(
                model,
                _splits("", 0, 0, 6, 0).test,
                "arc_easy",
                edit=edit,
                protocol=Protocol.GEN,
                max_new_tokens=3,
                progress=False,
            )
            print(
                f"reloaded {method}: gen rougeL {gen.summary['rougeL']:.3f}, mc gen accuracy "
                f"{mc.summary['accuracy']:.3f}"
            )
    ok = failed.empty
    print(f"SMOKE {'OK' if ok else 'FAILED'} on {args.device} in {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
