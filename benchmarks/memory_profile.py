"""Peak resident memory of each phase of ``make demo``, to find what holds the memory.

Runs the demo's phases in order on the embedded model, with the demo's task (cloze protocol),
budget and batch sizes (``--n-*`` and ``--epochs`` shrink it; peak memory depends on the batch
shapes more than on the item count): first-time model conversion (``--convert``: a fresh cache,
the GGUF de-quantized again), ``load_model``, zero-shot cloze evaluation, ``train_jola`` (with
the demo's activation checkpointing; ``--no-checkpoint``: without), evaluation with the edit,
attribution scores (``--attribution``; the label-era demo ran them, the cloze demo does not),
and the figures (``--figures``; PNG export runs a Chromium child process, whose memory is
counted separately). A sampling thread reads this process's resident set (VmRSS) every 50 ms, so
each phase gets its own peak, and the children's peak comes from ``RUSAGE_CHILDREN``.

    python benchmarks/memory_profile.py --epochs 1 --figures        # ~4 min on a 2-core CPU
    python benchmarks/memory_profile.py --convert --figures         # the whole demo, from-zero conversion too
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402

log = logging.getLogger("memory_profile")


def current_rss_mb() -> float:
    """This process's resident set now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _machine.peak_rss_mb()


class PhaseMemory:
    """Samples VmRSS in a thread and keeps each named phase's start, peak and end."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.phases: list[dict[str, Any]] = []
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, current_rss_mb())
            time.sleep(self.interval)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = current_rss_mb()
        self._peak = start
        t0 = time.perf_counter()
        try:
            yield
        finally:
            end = current_rss_mb()
            self.phases.append(
                {
                    "phase": name,
                    "start_mb": start,
                    "peak_mb": max(self._peak, end),
                    "end_mb": end,
                    "seconds": time.perf_counter() - t0,
                }
            )
            log.info(
                "%-22s start %6.0f MB  peak %6.0f MB  end %6.0f MB  (%.0f s)",
                name,
                start,
                self.phases[-1]["peak_mb"],
                end,
                self.phases[-1]["seconds"],
            )

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from jolalens.demo import DemoBudget

    demo = DemoBudget()
    ap.add_argument("--n-train", type=int, default=demo.n_train)
    ap.add_argument("--n-valid", type=int, default=demo.n_valid)
    ap.add_argument("--n-test", type=int, default=demo.n_test)
    ap.add_argument("--epochs", type=int, default=demo.epochs)
    ap.add_argument("--attribution", action="store_true", help="also run mean-ablation attribution scores")
    ap.add_argument("--attribution-batch-size", type=int, default=2, help="examples per attribution batch")
    ap.add_argument("--convert", action="store_true", help="also time the first-use GGUF conversion (fresh cache dir)")
    ap.add_argument("--figures", action="store_true", help="also make the demo's figures (HTML and PNG)")
    ap.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="train without activation checkpointing (the demo checkpoints; this shows what it saves)",
    )
    ap.add_argument(
        "--out", type=Path, default=Path("runs/benchmarks/memory_profile"), help="writes OUT.json and OUT.md"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    mem = PhaseMemory()
    with mem.phase("import jolalens"):
        import jolalens
        from jolalens.analysis import attribution_scores
        from jolalens.evaluate import evaluate
        from jolalens.models import EMBEDDED_MODELS, _converted_checkpoint
        from jolalens.tasks import load_task_splits
    if args.convert:
        with tempfile.TemporaryDirectory() as tmp, mem.phase("GGUF conversion (first use)"):
            old = os.environ.get("JOLALENS_CACHE")
            os.environ["JOLALENS_CACHE"] = tmp
            try:
                _converted_checkpoint(EMBEDDED_MODELS["smollm2-135m-instruct"])
            finally:
                if old is None:
                    os.environ.pop("JOLALENS_CACHE")
                else:
                    os.environ["JOLALENS_CACHE"] = old
    with mem.phase("load_model"):
        model = jolalens.load_model()
    budget = dataclasses.replace(demo, checkpoint_activations=not args.no_checkpoint)
    train_phase = "train_jola (bs 8" + (", activation checkpointing)" if budget.checkpoint_activations else ")")
    splits = load_task_splits(
        budget.task,
        n_train=args.n_train,
        n_valid=args.n_valid,
        n_test=args.n_test,
        seed=budget.seed,
        protocol="cloze",
    )
    with mem.phase("evaluate (cloze, bs 16)"):
        evaluate(model, splits.test, budget.task, protocol="cloze", progress=False)
    with mem.phase(train_phase):
        result = jolalens.train_jola(
            model,
            splits.train,
            splits.valid,
            jola=jolalens.JolaConfig(seed=budget.seed),
            config=budget.train_config(epochs=args.epochs, progress=False),
            sparsity=jolalens.SparsityConfig(lam=budget.lam),
        )
    with mem.phase("evaluate with edit"):
        evaluate(model, splits.test, budget.task, edit=result.edit, protocol="cloze", progress=False)
    with tempfile.TemporaryDirectory() as run_dir:
        result.save(Path(run_dir) / "run", overwrite=True)
        if args.attribution:
            with mem.phase(f"attribution_scores (bs {args.attribution_batch_size})"):
                scores = attribution_scores(
                    model,
                    splits.valid,
                    ablation="mean",
                    reference=splits.train,
                    batch_size=args.attribution_batch_size,
                    progress=False,
                )
                scores.save(Path(run_dir) / "run" / "ablation" / "attribution_mean.pt")
        if args.figures:
            from jolalens.analysis import make_figures
            from jolalens.analysis.figures import FigureExportError

            with mem.phase("make_figures"):
                try:
                    make_figures(
                        Path(run_dir) / "run", Path(run_dir) / "figures", model=model, command="memory_profile"
                    )
                except FigureExportError as exc:
                    log.warning("figures not written: %s", exc)
    mem.close()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result_json = {
        "command": _machine.command_line(__file__, argv),
        "machine": _machine.machine_info(),
        "phases": mem.phases,
        "process_peak_rss_mb": _machine.peak_rss_mb(),
        "children_peak_rss_mb": children,
    }
    lines = [
        f"# Peak resident memory by phase of the demo\n\nCommand: `{result_json['command']}`\n",
        "| phase | start MB | peak MB | end MB | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['phase']} | {p['start_mb']:.0f} | {p['peak_mb']:.0f} | {p['end_mb']:.0f} | {p['seconds']:.0f} |"
        for p in mem.phases
    ]
    lines.append(
        f"\nProcess peak RSS: {result_json['process_peak_rss_mb']:.0f} MB; largest waited-for child: {children:.0f} MB "
        "(a forked child starts with its parent's resident pages, so this can echo the parent's peak)"
    )
    _machine.write_report(args.out, result_json, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
