"""The summary of ``peer_jola.py``: each system's post-warm-up steps pooled over rounds, and the Markdown table."""

from __future__ import annotations

from typing import Any

import _machine

__all__ = ["markdown", "summarise"]


def summarise(runs: list[dict[str, Any]], warmup: int, matmul_gflops: float) -> dict[str, Any]:
    """Pooled post-warm-up steps of one system over all rounds: median time, useful GFLOP/s, peak memory."""
    shape = _machine.ModelShape(**runs[0]["shape"])
    times, cpu, flops, tokens, padded = [], [], 0.0, 0, 0
    for run in runs:
        for s, c, b in list(zip(run["step_s"], run["cpu_s"], run["batches"], strict=False))[warmup:]:
            times.append(s)
            cpu.append(c)
            flops += 2 * _machine.forward_flops(shape, b["tokens"], b["answer_tokens"], b["keys"])
            tokens += b["tokens"]
            padded += b["padded"]
    if not times:
        raise ValueError(f"no steps after {warmup} warm-up steps")
    import statistics

    rate = flops / sum(times) / 1e9
    gpu = [r["peak_gpu_mb"] for r in runs if r.get("peak_gpu_mb") is not None]
    return {
        "system": runs[0]["system"],
        "timed_steps": len(times),
        "median_step_s": statistics.median(times),
        "mean_step_s": sum(times) / len(times),
        "median_step_cpu_s": statistics.median(cpu),
        "cpu_gflops_per_thread": flops / sum(cpu) / 1e9,
        "tokens_per_step": tokens / len(times),
        "padding_fraction": 1 - tokens / padded if padded else 0.0,
        "useful_gflops": rate,
        "fraction_of_matmul": rate / matmul_gflops,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_gpu_mb": max(gpu) if gpu else None,
        "trainable_params": runs[0]["trainable_params"],
        "load_s": [round(r["load_s"], 2) for r in runs],
    }


def markdown(result: dict[str, Any]) -> str:
    rows = result["summary"]
    lines = [
        f"# jolalens vs jola==0.0.1: a JoLA training step ({result['task']}, {result.get('items', 'label')} items, "
        f"batch {result['batch_size']}, "
        f"{result['device']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, {result['threads']} "
        "threads, "
        f"load average at start {result['machine'].get('loadavg_1_5_15')} (shared box)  ",
        f"Dense fp32 matmul rate (2048^2, same threads): best {result['matmul']['gflops_best']:.1f} GFLOP/s, "
        f"median {result['matmul']['gflops_median']:.1f}",
        "",
        "| system | median s/step (wall) | median CPU s/step | useful GFLOP/s | of matmul rate | peak RSS MB | "
        "tokens/step | padding | trainable |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rows.values():
        lines.append(
            f"| {s['system']} | {s['median_step_s']:.2f} | {s['median_step_cpu_s']:.2f} | {s['useful_gflops']:.1f} | "
            f"{100 * s['fraction_of_matmul']:.0f}% "
            f"| {s['peak_rss_mb']:.0f} | {s['tokens_per_step']:.0f} | {100 * s['padding_fraction']:.0f}% | "
            f"{s['trainable_params']} |"
        )
    lines += [
        "",
        f"Speed-up of jolalens per step (median wall): **{result['speedup']:.2f}x**; "
        f"in CPU seconds (less sensitive to other jobs on a shared box): **{result['speedup_cpu']:.2f}x**",
        "",
    ]
    if result.get("accuracy"):
        lines += ["| system | accuracy (jolalens loglik evaluator) | n test |", "|---|---:|---:|"]
        for name, acc in result["accuracy"].items():
            lines.append(f"| {name} | {acc['accuracy']:.3f} | {acc['n']} |")
    else:
        lines.append("Accuracy at the same budget: not run (`--accuracy-epochs 0`).")
    return "\n".join(lines) + "\n"
