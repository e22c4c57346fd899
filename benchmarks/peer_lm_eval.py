"""jolalens' multiple-choice scoring beside lm-evaluation-harness (``HFLM.loglikelihood``).

The same items (one commonsense task's test items), the same prompts (jolalens' Alpaca format)
and the same continuations (each answer option), the same model weights, batch size and
threads. lm-eval gets one ``loglikelihood`` request per (item, option), which is how its
multiple-choice tasks reach the model; jolalens scores with ``evaluate(protocol="loglik")``
(and the ``cloze`` protocol when this jolalens has one). Each system runs in its own
subprocess (own peak RSS), rounds alternate which goes first, and ``--warmup-items`` items are
scored first and excluded from the timing. The per-item choices of lm-eval and jolalens' loglik
must be identical: the script says how many differ and exits 1 if any do.

Useful FLOPs of an item (charged the same to both): the prompt once (the prefix all prompts
share once in all), each option's tokens after its first once, attention over real keys, and
the unembedding at the positions that predict option tokens; 2 x params x tokens for the
decoder matmuls (see ``_machine.forward_flops``). The achieved rate is compared with the
dense fp32 matmul rate measured in the same run.

    python benchmarks/peer_lm_eval.py --n-items 200 --rounds 2           # CPU
    python benchmarks/peer_lm_eval.py --device cuda --n-items 1000       # GPU (pending)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402

log = logging.getLogger("peer_lm_eval")


def load_items(task: str, n_items: int, seed: int) -> list[Any]:
    from jolalens.tasks import load_task_splits

    return list(load_task_splits(task, n_train=0, n_valid=0, n_test=n_items, seed=seed).test)


def protocols() -> list[str]:
    """``loglik``, and ``cloze`` when this jolalens has that protocol."""
    from jolalens.evaluate import Protocol

    cloze = getattr(Protocol, "CLOZE", None)
    return ["loglik"] + ([cloze.value] if cloze is not None else [])


def useful_flops(model: Any, items: list[Any], shape: _machine.ModelShape) -> dict[str, float]:
    """The minimal forward work of scoring ``items`` by option log-likelihood (see the module doc)."""
    from jolalens.data import PromptStyle
    from jolalens.scoring import common_prefix, encode_choices

    tok = model.tokenizer
    encoded = [encode_choices(tok, ex, PromptStyle.ALPACA, 400) for ex in items]
    n0 = common_prefix([p for p, _ in encoded])
    tokens, keys, unembedded = n0, _machine.causal_keys(n0), 0
    for prompt, choices in encoded:
        own = len(prompt) - n0
        tokens += own
        keys += _machine.causal_keys(own, n0)
        unembedded += 1
        for c in choices:
            tokens += len(c) - 1
            keys += _machine.causal_keys(len(c) - 1, len(prompt))
            unembedded += len(c) - 1
    return {"flops": _machine.forward_flops(shape, tokens, unembedded, keys), "tokens": tokens, "shared_prefix": n0}


# ---- workers ----------------------------------------------------------------------------------------


def _timed(fn: Any) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def jolalens_worker(args: argparse.Namespace, protocol: str) -> dict[str, Any]:
    import jolalens
    from jolalens.evaluate import evaluate

    model = jolalens.load_model(device=args.device)
    items = load_items(args.task, args.n_items + args.warmup_items, args.seed)
    warm, timed = items[: args.warmup_items], items[args.warmup_items :]
    if warm:
        evaluate(model, warm, args.task, protocol=protocol, batch_size=args.batch_size, progress=False)
    _machine.sync(args.device)
    res, wall, cpu = _timed(
        lambda: evaluate(model, timed, args.task, protocol=protocol, batch_size=args.batch_size, progress=False)
    )
    _machine.sync(args.device)
    choices = [
        list(ex.choices).index(p) if p in ex.choices else -1
        for ex, p in zip(timed, res.items["prediction"], strict=True)
    ]
    return {
        "system": f"jolalens {jolalens.__version__} ({protocol})",
        "seconds": wall,
        "cpu_seconds": cpu,
        "choices": choices,
        "accuracy": float(res.summary["accuracy"]),
        "peak_rss_mb": _machine.peak_rss_mb(),
        "peak_gpu_mb": _machine.peak_gpu_mb(args.device),
    }


def lm_eval_worker(args: argparse.Namespace) -> dict[str, Any]:
    """HFLM on the same HF model and tokenizer jolalens uses, one request per (item, option).

    The tokenizer is jolalens' (TransformerLens sets it to prepend BOS); the checkpoint's own
    ``AutoTokenizer`` does not, and with it the two would score different token sequences.
    """
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import jolalens
    from jolalens.data import PromptStyle, format_prompt

    model = jolalens.load_model(device=args.device)
    hf, tok = jolalens.hf_view(model), model.tokenizer
    lm = HFLM(pretrained=hf, tokenizer=tok, batch_size=args.batch_size, device=args.device)
    items = load_items(args.task, args.n_items + args.warmup_items, args.seed)

    def score(examples: list[Any]) -> list[int]:
        requests, owners = [], []
        for i, ex in enumerate(examples):
            ctx = format_prompt(ex.instruction, PromptStyle.ALPACA, tok)
            for c in ex.choices:
                requests.append(Instance(request_type="loglikelihood", doc={}, arguments=(ctx, c), idx=len(requests)))
                owners.append(i)
        out = lm.loglikelihood(requests, disable_tqdm=True)
        best: dict[int, tuple[float, int]] = {}
        counts: dict[int, int] = {}
        for i, (logp, _greedy) in zip(owners, out, strict=True):
            k = counts.get(i, 0)
            counts[i] = k + 1
            if i not in best or logp > best[i][0]:
                best[i] = (logp, k)
        return [best[i][1] for i in range(len(examples))]

    warm, timed = items[: args.warmup_items], items[args.warmup_items :]
    if warm:
        score(warm)
    choices, wall, cpu = _timed(lambda: score(timed))
    correct = [ex.choices[c] == ex.answer for ex, c in zip(timed, choices, strict=True)]
    return {
        "system": f"lm-eval {lm_eval.__version__} HFLM",
        "seconds": wall,
        "cpu_seconds": cpu,
        "choices": choices,
        "accuracy": sum(correct) / len(correct),
        "peak_rss_mb": _machine.peak_rss_mb(),
        "peak_gpu_mb": _machine.peak_gpu_mb(args.device),
    }


# ---- main -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--n-items", type=int, default=200, help="timed items")
    ap.add_argument("--warmup-items", type=int, default=16, help="scored first, not timed")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="rounds; the first system alternates")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in every worker (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/benchmarks/peer_lm_eval"), help="writes OUT.json and OUT.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.n_items < 1 or args.rounds < 1 or args.batch_size < 1 or args.warmup_items < 0:
        ap.error("--n-items, --rounds and --batch-size must be >= 1 and --warmup-items >= 0")
    return args


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# jolalens vs lm-evaluation-harness: multiple-choice log-likelihood ({result['task']}, "
        f"{result['n_items']} items, batch {result['batch_size']}, {result['device']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, {result['threads']} "
        "threads, "
        f"load average at start {result['machine'].get('loadavg_1_5_15')} (shared box)  ",
        f"Dense fp32 matmul rate (2048^2, same threads): best {result['matmul']['gflops_best']:.1f} GFLOP/s  ",
        f"Useful work: {result['useful']['tokens']} tokens, {result['useful']['flops'] / 1e9:.0f} GFLOP "
        f"(shared prefix of {result['useful']['shared_prefix']} tokens counted once)",
        "",
        "| system | items/s (median) | CPU s | useful GFLOP/s | of matmul rate | peak RSS MB | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"].values():
        lines.append(
            f"| {s['system']} | {s['items_per_s']:.2f} | {s['median_cpu_s']:.0f} | {s['useful_gflops']:.1f} | "
            f"{100 * s['fraction_of_matmul']:.0f}% | {s['peak_rss_mb']:.0f} | {s['accuracy']:.3f} |"
        )
    lines += [
        "",
        f"jolalens loglik / lm-eval throughput: **{result['ratio']:.2f}x** (goal >= 3x); in CPU seconds: "
        f"**{result['ratio_cpu']:.2f}x**",
        "",
        f"Per-item choices, lm-eval vs jolalens loglik: {result['choice_disagreements']} of {result['n_items']} "
        "differ.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        out = lm_eval_worker(args) if args.worker == "lm_eval" else jolalens_worker(args, args.worker)
        print(json.dumps(out))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import jolalens

    names = ["lm_eval", *protocols()]
    model = jolalens.load_model()
    shape = _machine.ModelShape.from_hf_config(jolalens.hf_view(model).config)
    useful = useful_flops(
        model, load_items(args.task, args.n_items + args.warmup_items, args.seed)[args.warmup_items :], shape
    )
    del model
    machine = _machine.machine_info()
    matmul = _machine.matmul_rate(device=args.device)
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else {}
    common = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("task", "n_items", "warmup_items", "batch_size", "threads", "device", "seed")
    ]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            log.info("round %d/%d: %s", r + 1, args.rounds, name)
            runs[name].append(
                _machine.run_worker([sys.executable, str(Path(__file__).resolve()), "--worker", name, *common], env=env)
            )
            log.info(
                "  %.1f s (%.1f CPU s), accuracy %.3f",
                runs[name][-1]["seconds"],
                runs[name][-1]["cpu_seconds"],
                runs[name][-1]["accuracy"],
            )
    best = max(matmul["gflops_best"], _machine.matmul_rate(device=args.device)["gflops_best"])
    summary = {}
    for name, rs in runs.items():
        wall = statistics.median(r["seconds"] for r in rs)
        summary[name] = {
            "system": rs[0]["system"],
            "items_per_s": args.n_items / wall,
            "median_s": wall,
            "median_cpu_s": statistics.median(r["cpu_seconds"] for r in rs),
            "useful_gflops": useful["flops"] / wall / 1e9,
            "fraction_of_matmul": useful["flops"] / wall / 1e9 / best,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "accuracy": rs[0]["accuracy"],
        }
    ref, ours = runs["lm_eval"][0]["choices"], runs["loglik"][0]["choices"]
    disagree = sum(a != b for a, b in zip(ref, ours, strict=True))
    result = {
        "command": " ".join(["python", "benchmarks/peer_lm_eval.py", *(argv if argv is not None else sys.argv[1:])]),
        "task": args.task,
        "n_items": args.n_items,
        "batch_size": args.batch_size,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "machine": machine,
        "matmul": {**matmul, "gflops_best": best},
        "useful": useful,
        "summary": summary,
        "runs": runs,
        "choice_disagreements": disagree,
        "ratio": summary["lm_eval"]["median_s"] / summary["loglik"]["median_s"],
        "ratio_cpu": summary["lm_eval"]["median_cpu_s"] / summary["loglik"]["median_cpu_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(args.out) + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(str(args.out) + ".md").write_text(markdown(result))
    print(markdown(result))
    if disagree:
        log.error("%d of %d items: lm-eval and jolalens (loglik) chose different options", disagree, args.n_items)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
