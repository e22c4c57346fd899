"""jolalens' multiple-choice scoring beside lm-evaluation-harness (``HFLM.loglikelihood``).

The same items (one commonsense task's test items), the same (context, continuation) pairs,
the same model weights, batch size and threads, for each of jolalens' two log-likelihood
protocols: ``loglik`` (jolalens' Alpaca prompt, each option as the continuation) and ``cloze``
(lm-eval's own convention: the raw question, ``" " + option``). lm-eval gets one
``loglikelihood`` request per (item, option), which is how its multiple-choice tasks reach the
model; jolalens scores with ``evaluate(protocol=...)``. Each system runs in its own
subprocess (own peak RSS), rounds alternate which goes first, and ``--warmup-items`` items are
scored first and excluded from the timing. The per-item choices (``acc``) of lm-eval and jolalens
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


def load_items(task: str, n_items: int, seed: int, protocol: str) -> list[Any]:
    """The first ``n_items`` test items of ``task``, rendered for ``protocol`` (label format or cloze)."""
    from jolalens.tasks import load_task_splits

    splits = load_task_splits(task, n_train=0, n_valid=0, n_test=n_items, seed=seed, protocol=protocol)
    return list(splits.test)


PROTOCOLS = ("loglik", "cloze")  # jolalens' protocol -> lm-eval is given the same (context, continuation) pairs


def encoded_items(tok: Any, items: list[Any], protocol: str) -> list[tuple[list[int], list[list[int]]]]:
    """(context ids, option ids...) per distinct context, as jolalens' scorer of ``protocol`` sees them."""
    if protocol == "cloze":
        from jolalens.cloze import encoded_entries

        return encoded_entries(tok, items, 2048)[0]
    from jolalens.data import PromptStyle
    from jolalens.scoring import encode_choices

    return [encode_choices(tok, ex, PromptStyle.ALPACA, 400) for ex in items]


def requests_for(tok: Any, ex: Any, protocol: str) -> list[tuple[str, str]]:
    """The (context, continuation) strings lm-eval scores for each option of ``ex``."""
    if protocol == "cloze":
        from jolalens.cloze import cloze_pairs

        return cloze_pairs(ex)
    from jolalens.data import PromptStyle, format_prompt

    ctx = format_prompt(ex.instruction, PromptStyle.ALPACA, tok)
    return [(ctx, c) for c in ex.choices]


def useful_flops(model: Any, items: list[Any], shape: _machine.ModelShape, protocol: str) -> dict[str, float]:
    """The minimal forward work of scoring ``items`` by option log-likelihood (see the module doc)."""
    from jolalens.scoring import common_prefix

    encoded = encoded_items(model.tokenizer, items, protocol)
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
    items = load_items(args.task, args.n_items + args.warmup_items, args.seed, protocol)
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


def lm_eval_worker(args: argparse.Namespace, protocol: str) -> dict[str, Any]:
    """HFLM on the same HF model and tokenizer jolalens uses, one request per (item, option).

    The tokenizer is jolalens' (TransformerLens sets it to prepend BOS); the checkpoint's own
    ``AutoTokenizer`` does not, and with it the two would score different token sequences.
    """
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import jolalens

    model = jolalens.load_model(device=args.device)
    hf, tok = jolalens.hf_view(model), model.tokenizer
    lm = HFLM(pretrained=hf, tokenizer=tok, batch_size=args.batch_size, device=args.device)
    items = load_items(args.task, args.n_items + args.warmup_items, args.seed, protocol)

    def score(examples: list[Any]) -> list[int]:
        requests, owners = [], []
        for i, ex in enumerate(examples):
            for pair in requests_for(tok, ex, protocol):
                requests.append(Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=len(requests)))
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
        "system": f"lm-eval {lm_eval.__version__} HFLM ({protocol})",
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
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    ap.add_argument("--report", type=Path, help="only re-render OUT.md from this run's saved JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.n_items < 1 or args.rounds < 1 or args.batch_size < 1 or args.warmup_items < 0:
        ap.error("--n-items, --rounds and --batch-size must be >= 1 and --warmup-items >= 0")
    return args


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# jolalens vs lm-evaluation-harness: multiple-choice log-likelihood ({result['task']}, "
        f"{result['n_items']} items, batch {result['batch_size']}, {result['device']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, {result['threads']} threads, "
        f"load average at start {m.get('loadavg_1_5_15')}  ",
        f"Dense fp32 matmul rate (2048^2, same threads): best {result['matmul']['gflops_best']:.1f} GFLOP/s, "
        f"{result['matmul'].get('gflops_per_cpu_s_best', float('nan')):.1f} GFLOP per CPU-second",
        "",
        "| protocol | system | items/s (median) | CPU s | useful GFLOP/s | of matmul, wall | of matmul, CPU | "
        "peak RSS MB | accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_cpu = result["matmul"].get("gflops_per_cpu_s_best") or float("nan")
    for protocol, pair in result["protocols"].items():
        for s in pair["summary"].values():
            lines.append(
                f"| {protocol} | {s['system']} | {s['items_per_s']:.2f} | {s['median_cpu_s']:.1f} | "
                f"{s['useful_gflops']:.1f} | {100 * s['fraction_of_matmul']:.0f}% | "
                f"{100 * pair['useful']['flops'] / 1e9 / s['median_cpu_s'] / per_cpu:.0f}% | {s['peak_rss_mb']:.0f} | "
                f"{s['accuracy']:.3f} |"
            )
    lines += [
        "",
        '"of matmul, wall": useful GFLOP per wall second over the best wall-clock matmul rate of the run; '
        '"of matmul, CPU": useful GFLOP per CPU second over the matmul\'s GFLOP per CPU second (robust to '
        "other jobs on a shared box).",
        "",
    ]
    for protocol, pair in result["protocols"].items():
        u = pair["useful"]
        lines.append(
            f"* **{protocol}**: jolalens / lm-eval throughput **{pair['ratio']:.2f}x** wall, "
            f"**{pair['ratio_cpu']:.2f}x** CPU seconds (goal >= 3x); per-item choices differ on "
            f"{pair['choice_disagreements']} of {result['n_items']} items; useful work {u['tokens']} tokens, "
            f"{u['flops'] / 1e9:.0f} GFLOP (shared prefix of {u['shared_prefix']} tokens counted once)."
        )
    return "\n".join(lines) + "\n"


def _summary(rs: list[dict[str, Any]], n_items: int, flops: float, best: float) -> dict[str, Any]:
    wall = statistics.median(r["seconds"] for r in rs)
    return {
        "system": rs[0]["system"],
        "items_per_s": n_items / wall,
        "median_s": wall,
        "median_cpu_s": statistics.median(r["cpu_seconds"] for r in rs),
        "useful_gflops": flops / wall / 1e9,
        "fraction_of_matmul": flops / wall / 1e9 / best,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        "accuracy": rs[0]["accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        text = markdown(json.loads(args.report.read_text()))
        args.report.with_suffix(".md").write_text(text)
        print(text)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        system, protocol = args.worker.split(":")
        out = lm_eval_worker(args, protocol) if system == "lm_eval" else jolalens_worker(args, protocol)
        print(json.dumps(out))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import jolalens

    protocols = args.protocols
    names = [f"{system}:{p}" for p in protocols for system in ("lm_eval", "jolalens")]
    model = jolalens.load_model()
    shape = _machine.ModelShape.from_hf_config(jolalens.hf_view(model).config)
    n_all = args.n_items + args.warmup_items
    useful = {
        p: useful_flops(model, load_items(args.task, n_all, args.seed, p)[args.warmup_items :], shape, p)
        for p in protocols
    }
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
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, *common]
            runs[name].append(_machine.run_worker(cmd, env=env))
            last = runs[name][-1]
            log.info("  %.1f s (%.1f CPU s), accuracy %.3f", last["seconds"], last["cpu_seconds"], last["accuracy"])
    end_rate = _machine.matmul_rate(device=args.device)
    best = max(matmul["gflops_best"], end_rate["gflops_best"])
    per_cpu = max(matmul.get("gflops_per_cpu_s_best", 0.0), end_rate.get("gflops_per_cpu_s_best", 0.0))
    pairs: dict[str, Any] = {}
    disagree_total = 0
    for p in protocols:
        ref, ours = runs[f"lm_eval:{p}"], runs[f"jolalens:{p}"]
        disagree = sum(a != b for a, b in zip(ref[0]["choices"], ours[0]["choices"], strict=True))
        disagree_total += disagree
        summary = {
            n: _summary(runs[n], args.n_items, useful[p]["flops"], best) for n in (f"lm_eval:{p}", f"jolalens:{p}")
        }
        pairs[p] = {
            "useful": useful[p],
            "summary": summary,
            "choice_disagreements": disagree,
            "ratio": summary[f"lm_eval:{p}"]["median_s"] / summary[f"jolalens:{p}"]["median_s"],
            "ratio_cpu": summary[f"lm_eval:{p}"]["median_cpu_s"] / summary[f"jolalens:{p}"]["median_cpu_s"],
        }
    result = {
        "command": _machine.command_line(__file__, argv),
        "task": args.task,
        "n_items": args.n_items,
        "batch_size": args.batch_size,
        "device": args.device,
        "threads": args.threads or torch.get_num_threads(),
        "machine": machine,
        "matmul": {**matmul, "gflops_best": best, "gflops_per_cpu_s_best": per_cpu},
        "protocols": pairs,
        "runs": runs,
    }
    _machine.write_report(args.out, result, markdown(result))
    if disagree_total:
        log.error("lm-eval and jolalens chose different options on %d items (see the table)", disagree_total)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
