"""What a JoLA training epoch costs under each of jolalens' training options, side by side.

Each variant runs ``train_jola`` (the real trainer, nothing re-implemented) for ``--epochs`` on
the same items in its own subprocess (its own peak RSS), rounds alternating the order:

* ``plain``: the paper's recipe (a shuffled order cut into batches of 8);
* ``grouped``: ``TrainConfig(length_grouping=K)``: each run of K batches re-cut by length;
* ``checkpointed``: ``TrainConfig(checkpoint_activations=True)``: the same run as ``plain`` with
  each layer recomputed in the backward (the demo's setting);
* ``grouped+checkpointed``.

Reported per variant: CPU seconds per epoch, the share of padding in the training batches, the
useful FLOP rate as a fraction of the dense fp32 matmul rate measured in the same run (useful
FLOPs = 2 x forward over real tokens, attended keys and answer-position logits, the formula of
``peer_jola.py``; a checkpointed layer's second forward is not counted as useful), peak RSS and
the final validation CE (``checkpointed`` must equal ``plain``). The validation pass each epoch
runs on ``--n-valid`` items and is charged to the epoch.

    python benchmarks/train_speed.py --n-train 200 --epochs 1 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402

log = logging.getLogger("train_speed")
VARIANTS = {
    "plain": {},
    "grouped": {"length_grouping": None},  # None: --group
    "checkpointed": {"checkpoint_activations": True},
    "grouped+checkpointed": {"length_grouping": None, "checkpoint_activations": True},
}


def variant_options(name: str, group: int) -> dict[str, Any]:
    return {k: (group if v is None else v) for k, v in VARIANTS[name].items()}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant; count the tokens of the batches the trainer cut (replayed from its seed)."""
    import torch

    import jolalens
    from jolalens import JolaConfig, SparsityConfig, TrainConfig
    from jolalens.answer_loss import epoch_batches, tokenize_rows
    from jolalens.tasks import load_task_splits

    torch.set_num_threads(args.threads)
    model = jolalens.load_model()
    splits = load_task_splits(
        args.task, n_train=args.n_train, n_valid=args.n_valid, n_test=1, seed=args.seed, protocol=args.protocol
    )
    style = "cloze" if args.protocol == "cloze" else "alpaca"
    cfg = TrainConfig(
        epochs=args.epochs, patience=args.epochs, seed=args.seed, progress=False, prompt_style=style,
        **variant_options(args.worker, args.group),
    )  # fmt: skip
    t0, c0 = time.perf_counter(), time.process_time()
    result = jolalens.train_jola(
        model, splits.train, splits.valid, jola=JolaConfig(seed=args.seed), config=cfg, sparsity=SparsityConfig()
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = tokenize_rows(model.tokenizer, list(splits.train), cfg, "training")
    gen = torch.Generator().manual_seed(cfg.seed)  # the trainer's order generator, replayed
    real = padded = answers = keys = 0
    for _ in range(len(result.history)):
        for batch in epoch_batches(len(rows), [len(r[0]) for r in rows], cfg.batch_size, cfg.length_grouping, gen):
            lengths = [len(rows[j][0]) for j in batch]
            real += sum(lengths)
            padded += max(lengths) * len(lengths)
            answers += sum(sum(1 for t in rows[j][1] if t != -100) for j in batch)
            keys += sum(_machine.causal_keys(n) for n in lengths)
    shape = _machine.ModelShape.from_hf_config(jolalens.hf_view(model).config)
    return {
        "variant": args.worker,
        "epochs": len(result.history),
        "wall_s": wall,
        "cpu_s": cpu,
        "tokens": real,
        "padded_tokens": padded,
        "useful_gflop": 2 * _machine.forward_flops(shape, real, answers, keys) / 1e9,
        "final_val_ce": float(result.history["val_ce"].iloc[-1]),
        "peak_rss_mb": _machine.peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def summarise(runs: list[dict[str, Any]], ceiling_per_cpu_s: float) -> dict[str, Any]:
    cpu = statistics.median(r["cpu_s"] / r["epochs"] for r in runs)
    wall = statistics.median(r["wall_s"] / r["epochs"] for r in runs)
    first = runs[0]
    rate = first["useful_gflop"] / first["epochs"] / cpu
    return {
        "cpu_s_per_epoch": cpu,
        "wall_s_per_epoch": wall,
        "padding_share": 1 - first["tokens"] / first["padded_tokens"],
        "useful_gflop_per_cpu_s": rate,
        "fraction_of_matmul": rate / ceiling_per_cpu_s,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "final_val_ce": first["final_val_ce"],
    }


def markdown(result: dict[str, Any]) -> str:
    base_name = "plain" if "plain" in result["summary"] else next(iter(result["summary"]))
    plain = result["summary"][base_name]["cpu_s_per_epoch"]
    lines = [
        f"# JoLA training epoch by option ({result['task']}, {result['protocol']}, {result['n_train']} items)",
        "",
        f"`{result['command']}`; {result['machine']['platform']}, torch {result['machine']['torch']}, "
        f"{result['threads']} thread(s), load {result['machine'].get('loadavg_1_5_15')}; matmul ceiling "
        f"{result['matmul']['gflops_per_cpu_s_best']:.1f} GFLOP per CPU second.",
        "",
        f"| variant | CPU s / epoch | vs {base_name} | padding | useful GFLOP / CPU s | of matmul "
        "| peak RSS MB | val CE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        lines.append(
            f"| {name} | {s['cpu_s_per_epoch']:.1f} | {plain / s['cpu_s_per_epoch']:.2f}x | {s['padding_share']:.0%} "
            f"| {s['useful_gflop_per_cpu_s']:.1f} | {s['fraction_of_matmul']:.0%} | {s['peak_rss_mb']:,.0f} "
            f"| {s['final_val_ce']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--protocol", choices=["label", "cloze"], default="label")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-valid", type=int, default=16, help="validation items per epoch (charged to the epoch)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--group", type=int, default=4, help="K of the grouped variants")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=2, help="rounds; the order of the variants alternates")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=Path("runs/benchmarks/train_speed"), help="writes OUT.json and OUT.md")
    ap.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if min(args.n_train, args.n_valid, args.epochs, args.group, args.rounds, args.threads) < 1:
        ap.error("--n-train, --n-valid, --epochs, --group, --rounds and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    machine = _machine.machine_info()
    matmul = _machine.matmul_rate()
    names = args.variants.split(",")
    passed = ("task", "protocol", "n_train", "n_valid", "epochs", "group", "threads", "seed")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    env = {"OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
            cmd += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in passed]
            runs[name].append(_machine.run_worker(cmd, env=env))
            log.info("round %d, %s: %.1f CPU s", r + 1, name, runs[name][-1]["cpu_s"])
    matmul_after = _machine.matmul_rate()
    ceiling = max(matmul["gflops_per_cpu_s_best"], matmul_after["gflops_per_cpu_s_best"])
    result = {
        "command": _machine.command_line(__file__, argv),
        "task": args.task,
        "protocol": args.protocol,
        "n_train": args.n_train,
        "threads": args.threads,
        "machine": machine,
        "matmul": {**matmul, "gflops_per_cpu_s_best": ceiling, "after": matmul_after},
        "summary": {n: summarise(runs[n], ceiling) for n in names},
        "runs": runs,
    }
    _machine.write_report(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
