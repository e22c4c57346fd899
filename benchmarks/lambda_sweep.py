"""Choose the default sparsity weight and gate learning-rate scale on validation data only.

For each (lam, gate_lr_scale) JoLA is trained on a task's 200/200 train/valid split of the
embedded model, and the best validation cross-entropy and closed-gate fractions are recorded.
No test data is read. Writes ``benchmarks/results/lambda_sweep_<task>.json`` and ``.md``.

    python benchmarks/lambda_sweep.py --task openbookqa --lams 0,0.5,2 --gate-lr-scales 1,10 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import jolalens
from jolalens import SparsityConfig, TrainConfig, train_jola
from jolalens.tasks import load_task_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="openbookqa")
    parser.add_argument("--lams", default="0,0.5,2")
    parser.add_argument("--gate-lr-scales", default="1,10")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-valid", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    model = jolalens.load_model()
    splits = load_task_splits(args.task, n_train=args.n_train, n_valid=args.n_valid, n_test=0, seed=args.seed)
    rows = []
    for scale in [float(x) for x in args.gate_lr_scales.split(",")]:
        for lam in [float(x) for x in args.lams.split(",")]:
            cfg = TrainConfig(
                epochs=args.epochs,
                seed=args.seed,
                gate_lr_scale=scale,
                progress=False,
                lr=args.lr,
                warmup_steps=args.warmup,
                patience=args.epochs,
            )
            result = train_jola(model, splits.train, splits.valid, config=cfg, sparsity=SparsityConfig(lam=lam))
            s = result.summary()
            row = {
                "lam": lam,
                "gate_lr_scale": scale,
                **{k: v for k, v in s.items() if k != "closed_fraction"},
                **{f"closed_{k}": v for k, v in s["closed_fraction"].items()},
            }
            rows.append(row)
            print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    payload = {"machine": machine, "args": vars(args), "rows": rows}
    (out / f"lambda_sweep_{args.task}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        f"Task {args.task}, {args.n_train}/{args.n_valid} train/valid, seed {args.seed}, "
        f"{args.epochs} epochs, lr {args.lr}, {args.warmup} warm-up steps; {machine}. Validation data only.",
        "",
        "| lam | gate_lr_scale | val CE epoch 1 | best val CE | best epoch | closed additive | closed multiplicative | "
        "s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['lam']} | {r['gate_lr_scale']} | {r['val_ce_first_epoch']:.4f} | {r['val_ce_best']:.4f} | "
            f"{r['best_epoch']} | {r.get('closed_additive', 0):.0%} | {r.get('closed_multiplicative', 0):.0%} | "
            f"{r['seconds']:.0f} |"
        )
    (out / f"lambda_sweep_{args.task}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
