"""Shared measurement helpers for the side-by-side benchmarks: the machine, memory and FLOPs.

* :func:`matmul_rate` — the dense fp32 matmul rate of this machine (GFLOP/s) at the current
  thread count: the ceiling a model's achieved rate is compared with.
* :func:`peak_rss_mb` — this process's peak resident set size (CPU); :func:`peak_gpu_mb` the
  CUDA allocator's peak.
* :func:`body_params` / :func:`forward_flops` — FLOPs counted from the model's shapes and the
  tokens actually processed (padding excluded): ``2 * P_body * T`` for the matmuls of the
  decoder stack, ``2 * d_model * vocab`` per unembedded position, and ``4 * d_attn * k`` per
  query attending to ``k`` keys (scores and weighted sum).
* :func:`run_worker` — run one measurement in a fresh subprocess (its own peak RSS) and read
  the JSON it prints last.

Stdlib and torch only: the worker of the released JoLA package imports this file from its own
environment (transformers 4.45), so nothing here may import jolalens or transformers.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ModelShape",
    "attention_flops",
    "body_params",
    "causal_keys",
    "command_line",
    "forward_flops",
    "machine_info",
    "matmul_rate",
    "median_after_warmup",
    "peak_gpu_mb",
    "peak_rss_mb",
    "run_worker",
    "sync",
    "write_report",
]


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder that its FLOP count needs."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab: int

    def __post_init__(self) -> None:
        if min(self.n_layers, self.d_model, self.n_heads, self.n_kv_heads, self.d_head, self.d_mlp, self.vocab) < 1:
            raise ValueError(f"every size of a ModelShape must be >= 1, got {self}")

    @classmethod
    def from_hf_config(cls, cfg: Any) -> ModelShape:
        """From a Hugging Face Llama-style config (any transformers version)."""
        n_heads = int(cfg.num_attention_heads)
        d_head = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
        return cls(
            n_layers=int(cfg.num_hidden_layers),
            d_model=int(cfg.hidden_size),
            n_heads=n_heads,
            n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or n_heads),
            d_head=d_head,
            d_mlp=int(cfg.intermediate_size),
            vocab=int(cfg.vocab_size),
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def body_params(shape: ModelShape) -> int:
    """Weights multiplied per token in the decoder stack (q, k, v, o and the gated MLP), no embedding."""
    d, h, kv, dh = shape.d_model, shape.n_heads, shape.n_kv_heads, shape.d_head
    attn = d * h * dh + 2 * d * kv * dh + h * dh * d
    mlp = 3 * d * shape.d_mlp
    return shape.n_layers * (attn + mlp)


def attention_flops(shape: ModelShape, keys_per_query: float) -> float:
    """Scores and weighted sum for queries that attend to ``keys_per_query`` keys in total."""
    return 4.0 * shape.n_layers * shape.n_heads * shape.d_head * keys_per_query


def forward_flops(shape: ModelShape, tokens: int, unembedded: int, keys: float) -> float:
    """Forward FLOPs of ``tokens`` real tokens, ``unembedded`` logit rows and ``keys`` attended keys.

    ``keys``: the sum over real query tokens of the real keys each attends to (causal: a row of
    ``n`` tokens after a cached prefix of ``p`` gives ``n*p + n*(n+1)/2``).
    """
    return (
        2.0 * body_params(shape) * tokens
        + 2.0 * shape.d_model * shape.vocab * unembedded
        + attention_flops(shape, keys)
    )


def causal_keys(n: int, cached: int = 0) -> int:
    """Keys attended by ``n`` new tokens after ``cached`` cached ones, causal mask."""
    return n * cached + n * (n + 1) // 2


def sync(device: str | torch.device) -> None:
    """Wait for queued kernels, so a timer measures the work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(
    n: int = 2048, seconds: float = 3.0, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Dense ``n x n`` matmul rate in GFLOP/s at the current thread count: best and median of ~1 s chunks.

    The best chunk is the ceiling that we compare against (the machine is shared; the median
    shows how much the load cost while we measured). ``gflops_per_cpu_s_best`` divides by the
    process's CPU time instead: a ceiling for work measured in CPU seconds on a loaded box.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=c)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    torch.matmul(a, b, out=c)
    sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(round(min(seconds / 3, 1.0) / one)))
    rates, cpu_rates = [], []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        sync(device)
        rates.append(2.0 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
        cpu_rates.append(2.0 * n**3 * reps / max(time.process_time() - c0, 1e-9) / 1e9)
    return {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "gflops_best": max(rates),
        "gflops_median": statistics.median(rates),
        "chunks": len(rates),
        # per CPU-second of this process (all threads together): less sensitive to other jobs
        "gflops_per_cpu_s_best": max(cpu_rates),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports ru_maxrss in kB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def peak_gpu_mb(device: str | torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` in MB, None on CPU."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def median_after_warmup(times: list[float], warmup: int) -> float:
    """Median of ``times`` after dropping the first ``warmup``; raises when nothing is left."""
    kept = times[warmup:]
    if not kept:
        raise ValueError(f"no timed steps left after {warmup} warm-up steps (got {len(times)})")
    return statistics.median(kept)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, including the load average at the time (shared box)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    try:
        info["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_worker(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run ``cmd`` (a worker printing one JSON object as its last stdout line) and return that object."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise RuntimeError(f"worker {cmd[:3]}... failed with exit code {proc.returncode}:\n{tail}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker {cmd[:3]}... printed no JSON result; stderr tail:\n{proc.stderr[-2000:]}")
    out = json.loads(lines[-1])
    out["process_wall_s"] = time.perf_counter() - t0
    return out


def command_line(script: str, argv: list[str] | None) -> str:
    """How a benchmark was invoked, as a user would type it: ``python benchmarks/NAME.py ARGS``."""
    args = argv if argv is not None else sys.argv[1:]
    return " ".join(["python", f"benchmarks/{Path(script).name}", *args])


def write_report(out: Path, result: dict[str, Any], markdown: str) -> None:
    """``OUT.json`` and ``OUT.md``, each written whole or not at all, and the markdown printed."""
    from jolalens.fileio import atomic_path

    for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".md", markdown)):
        with atomic_path(str(out) + suffix) as tmp:
            tmp.write_text(text)
    print(markdown)
