"""Does JoLA find the heads that ablation says matter? Gates vs true mean-ablation, across tasks and seeds.

For each task (cloze protocol, where the embedded model is above chance) this script

1. scores every head by **true mean-ablation** on held-out validation items that no training
   run sees (``ablation_scores``: the drop in the gold option's mean log-prob when the head's
   ``hook_z`` is replaced by its mean over the training items);
2. trains JoLA with several seeds at the demo's budget (same data, other gate/edit
   initialisation and gate noise) and takes each run's open heads (a head is open when its
   additive or multiplicative eval gate is > 0);
3. compares each seed's open set with the ablation top-k (k = the open set's size): overlap
   against random head sets (permutation and hypergeometric p), AUROC and Spearman of the gates
   against the ablation scores; and the stability of the open set across seeds (pairwise
   Jaccard against that of random sets of the same sizes, hypergeometric p of the overlap).

Zero-shot and JoLA ``acc_norm`` on the ablation items are reported beside, with the chance level,
so that each row says whether the model can do the task at all. Every step writes its result
atomically under ``--out`` and is skipped when rerun (a crash loses at most the step it was in).

    python benchmarks/localization.py --tasks arc_easy,piqa,hellaswag --seeds 0,1,2   # ~1 h, 2-core CPU
    python benchmarks/localization.py --tasks arc_easy --seeds 0 --n-train 16 --n-ablate 4 --epochs 1  # smoke
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("localization")


def _done(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: Any) -> None:
    from jolalens.fileio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")


def _save_tensor(path: Path, data: dict[str, torch.Tensor]) -> None:
    from jolalens.fileio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def accuracy_step(model: Any, task: str, items: list[Any], edit: Any = None) -> dict[str, float]:
    from jolalens.evaluate import evaluate

    res = evaluate(model, items, task, edit=edit, protocol="cloze", progress=False)
    return {"acc": float(res.summary["accuracy"]), "acc_norm": float(res.summary["acc_norm"])}


def ablation_step(model: Any, items: list[Any], reference: list[Any], out: Path, batch_size: int) -> torch.Tensor:
    """``[layer, head]`` drop of the gold option's mean log-prob under mean ablation (cached on disk)."""
    from jolalens.analysis import ablation_scores
    from jolalens.data import PromptStyle

    path = out / "ablation_mean.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)["logprob_drop"]
    t0, c0 = time.perf_counter(), time.process_time()
    kwargs: dict[str, Any] = {}
    if "accuracy" in inspect.signature(ablation_scores).parameters:  # gold rows only: 1 row per item
        kwargs["accuracy"] = False
    scores = ablation_scores(
        model,
        items,
        ablation="mean",
        reference=reference,
        style=PromptStyle.CLOZE,
        batch_size=batch_size,
        progress=True,
        **kwargs,
    )
    _save_tensor(path, {"logprob_drop": scores.logprob_drop})
    _write_json(
        out / "ablation_meta.json",
        {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "n_items": len(items)},
    )
    return scores.logprob_drop


def train_step(model: Any, task: str, splits: Any, args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    """Train JoLA with ``seed``; keep its head maps and its acc on the ablation items."""
    import jolalens
    from jolalens.data import PromptStyle

    summary = _done(out / "summary.json")
    if summary is not None:
        return summary
    t0 = time.perf_counter()
    result = jolalens.train_jola(
        model,
        splits["train"],
        splits["stop"],
        jola=jolalens.JolaConfig(seed=seed),
        config=jolalens.TrainConfig(
            lr=args.lr,
            epochs=args.epochs,
            warmup_steps=2,
            seed=seed,
            patience=args.epochs,
            prompt_style=PromptStyle.CLOZE,
            progress=False,
        ),
    )
    maps = result.edit.head_maps()
    _save_tensor(out / "head_maps.pt", {k: v.detach().cpu() for k, v in maps.items()})
    summary = {
        "seed": seed,
        "train_seconds": time.perf_counter() - t0,
        "jola": accuracy_step(model, task, splits["ablate"], result.edit),
        "open_additive": int((maps["gate_additive"] > 0).sum()),
        "open_multiplicative": int((maps["gate_multiplicative"] > 0).sum()),
    }
    _write_json(out / "summary.json", summary)
    return summary


def open_map(maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """A head's selection score: its larger eval gate over the two edit types (> 0: open)."""
    return torch.maximum(maps["gate_additive"], maps["gate_multiplicative"]).float()


def stability(selections: dict[int, set[tuple[int, int]]], n_total: int) -> list[dict[str, Any]]:
    """Pairwise Jaccard of the seeds' open sets, against random sets of the same sizes."""
    from jolalens.analysis.compare import hypergeometric_p_value, jaccard

    rows = []
    for (s1, a), (s2, b) in itertools.combinations(sorted(selections.items()), 2):
        overlap = len(a & b)
        expected = len(a) * len(b) / n_total
        rows.append(
            {
                "seeds": f"{s1}-{s2}",
                "sizes": f"{len(a)}/{len(b)}",
                "overlap": overlap,
                "expected_overlap": expected,
                "jaccard": jaccard(a, b),
                "random_jaccard": expected / (len(a) + len(b) - expected) if a or b else float("nan"),
                "p_hypergeometric": hypergeometric_p_value(overlap, n_total, len(a), len(b)),
            }
        )
    return rows


def run_task(model: Any, task: str, args: argparse.Namespace) -> dict[str, Any]:
    from jolalens.analysis.compare import compare_selection, head_set, top_k
    from jolalens.tasks import load_task_splits

    out = args.out / task
    s = load_task_splits(
        task,
        n_train=args.n_train,
        n_valid=args.n_stop + args.n_ablate,
        n_test=0,
        seed=args.split_seed,
        protocol="cloze",
    )
    valid = list(s.valid)
    splits = {"train": list(s.train), "stop": valid[: args.n_stop], "ablate": valid[args.n_stop :]}
    chance = sum(1 / len(ex.choices) for ex in splits["ablate"]) / len(splits["ablate"])
    zero_shot = _done(out / "zero_shot.json")
    if zero_shot is None:
        zero_shot = accuracy_step(model, task, splits["ablate"])
        _write_json(out / "zero_shot.json", zero_shot)
    n_items = len(splits["ablate"])
    log.info("%s: zero-shot acc_norm %.3f (chance %.3f) on %d items", task, zero_shot["acc_norm"], chance, n_items)
    drop = ablation_step(model, splits["ablate"], splits["train"], out, args.ablation_batch_size)
    per_seed, selections = [], {}
    for seed in args.seeds:
        summary = train_step(model, task, splits, args, seed, out / f"seed{seed}")
        maps = torch.load(out / f"seed{seed}" / "head_maps.pt", weights_only=True)
        score = open_map(maps)
        selections[seed] = head_set(score, 0.0)
        row = {"task": task, **summary, "n_open": len(selections[seed])}
        if 1 <= len(selections[seed]) < score.numel():
            row.update(compare_selection(score, drop, seed=seed).iloc[0].to_dict())
        per_seed.append(row)
        log.info(
            "%s seed %d: %d open heads, JoLA acc_norm %.3f", task, seed, row["n_open"], summary["jola"]["acc_norm"]
        )
    return {
        "task": task,
        "n_train": len(splits["train"]),
        "n_stop": len(splits["stop"]),
        "n_ablate": len(splits["ablate"]),
        "chance": chance,
        "zero_shot": zero_shot,
        "ablation": _done(out / "ablation_meta.json"),
        "top_ablation_heads": [f"L{lay}H{hd}" for lay, hd in sorted(top_k(drop, 5))],
        "per_seed": per_seed,
        "stability": stability(selections, drop.numel()),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# JoLA's gates against true mean-ablation (cloze protocol)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}",
        "",
        "| task | items (train / stop / ablate) | chance | zero-shot acc_norm | seed | JoLA acc_norm | open heads | "
        "overlap with ablation top-k (expected) | p (permutation) | AUROC | Spearman |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in result["tasks"]:
        for r in t["per_seed"]:
            lines.append(
                f"| {t['task']} | {t['n_train']} / {t['n_stop']} / {t['n_ablate']} | {t['chance']:.3f} | "
                f"{t['zero_shot']['acc_norm']:.3f} | {r['seed']} | {r['jola']['acc_norm']:.3f} | {r['n_open']} | "
                f"{r.get('overlap', float('nan')):.0f} ({r.get('expected_overlap', float('nan')):.1f}) | "
                f"{r.get('p_permutation', float('nan')):.3f} | {r.get('auroc', float('nan')):.2f} | "
                f"{r.get('spearman', float('nan')):.2f} |"
            )
    lines += [
        "",
        "Seed stability of the open sets:",
        "",
        "| task | seeds | sizes | overlap (expected) | Jaccard | random Jaccard | p (hypergeometric) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for t in result["tasks"]:
        for r in t["stability"]:
            lines.append(
                f"| {t['task']} | {r['seeds']} | {r['sizes']} | {r['overlap']} ({r['expected_overlap']:.1f}) | "
                f"{r['jaccard']:.2f} | {r['random_jaccard']:.2f} | {r['p_hypergeometric']:.2g} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="arc_easy,piqa,hellaswag")
    ap.add_argument("--seeds", default="0,1,2", help="JoLA seeds (initialisation and gate noise)")
    ap.add_argument("--split-seed", type=int, default=42, help="the train/validation draw (same for every seed)")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-stop", type=int, default=50, help="validation items for early stopping")
    ap.add_argument("--n-ablate", type=int, default=50, help="other validation items: ablation and accuracy")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--ablation-batch-size", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("runs/localization"))
    args = ap.parse_args(argv)
    args.seeds = [int(x) for x in args.seeds.split(",")]
    if min(args.n_train, args.n_stop, args.n_ablate, args.epochs) < 1:
        ap.error("--n-train, --n-stop, --n-ablate and --epochs must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _machine

    import jolalens

    model = jolalens.load_model()
    info = _machine.machine_info()
    result = {
        "command": " ".join(["python", "benchmarks/localization.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{info['platform']}, {info['cpu_count']} CPUs, torch threads {torch.get_num_threads()}",
        "tasks": [run_task(model, t, args) for t in args.tasks.split(",")],
    }
    _write_json(args.out / "localization.json", result)
    (args.out / "localization.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
