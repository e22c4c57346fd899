"""Precompute the real runs the notebooks show, into ``runs/notebooks/<task>/`` (git-ignored).

The notebooks only *load* what this script writes, so they open in seconds and show a run at a
budget where the effects exist: gates that closed, a true mean-ablation beside attribution, and
test accuracy on hundreds of items. ``--fast`` shrinks every budget (the tests use it, through
the same code paths).

    python benchmarks/notebook_runs.py                      # the notebooks' runs (CPU: ~30-60 min)
    python benchmarks/notebook_runs.py --fast --out /tmp/nb  # seconds-to-minutes smoke run
    python benchmarks/notebook_runs.py --protocol loglik     # any protocol `jolalens.evaluate` takes

Layout written (``manifest.json`` names the command, budget, machine and timings)::

    <out>/jola/             TrainResult.save: edit/, history.csv, gate_history.pt (epoch 0 first),
                            head_maps.pt, summary.json
    <out>/jola/ablation/    mean.pt (true mean-ablation), attribution.pt (one-pass estimate)
    <out>/eval/             zeroshot.csv.gz, jola.csv.gz (per test item), summary.json
    <out>/compare/          a `jolalens compare` directory, unless --compare-dir names one
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import jolalens  # noqa: E402
from jolalens.analysis import ablation_scores, attribution_scores  # noqa: E402
from jolalens.data import PromptStyle  # noqa: E402
from jolalens.evaluate import Protocol, evaluate  # noqa: E402
from jolalens.methods import default_methods  # noqa: E402
from jolalens.tasks import load_task_splits  # noqa: E402

log = logging.getLogger("notebook_runs")

# A paper-grid comparison (200/200 examples, 500 test items, loglik), made by
# `python benchmarks/paper_grid.py --only main --tasks arc_easy`: notebook 03 reads it when it exists
# instead of re-running seven methods on a CPU (raw runs are not kept in git; without it a fresh,
# smaller comparison is run).
PAPER_GRID_MAIN = Path(__file__).resolve().parent / "results" / "paper_grid" / "main"
# notebook 03 shows `jolalens compare`'s default methods (the method registry's `default` ones)
COMPARE_METHODS = default_methods()


@dataclass(frozen=True)
class Budget:
    """Sizes of one notebook run; ``full`` shows real effects, ``fast`` only exercises the code."""

    n_train: int
    n_valid: int
    n_test: int
    epochs: int
    warmup_steps: int
    lr: float
    n_ablation: int
    compare_sizes: tuple[int, int, int, int]  # n_train, n_valid, n_test, epochs of a fresh compare

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_valid, self.n_test, self.epochs, self.n_ablation) < 1:
            raise ValueError("every budget size must be >= 1; pass --fast for the smallest one")


# lr 2e-2 is the point the paper grid's search picked on ARC-e (benchmarks/results/paper_grid/main)
FULL = Budget(
    n_train=200,
    n_valid=100,
    n_test=300,
    epochs=8,
    warmup_steps=20,
    lr=2e-2,
    n_ablation=16,
    compare_sizes=(64, 32, 300, 3),
)
# `make demo`'s training budget (chosen on validation data, docs/cloze.md): minutes on a 2-core CPU
MODEST = Budget(
    n_train=200, n_valid=50, n_test=200, epochs=4, warmup_steps=2, lr=2e-2, n_ablation=8, compare_sizes=(64, 32, 200, 3)
)
FAST = Budget(
    n_train=16, n_valid=8, n_test=8, epochs=1, warmup_steps=2, lr=2e-2, n_ablation=1, compare_sizes=(16, 8, 16, 1)
)
BUDGETS = {"full": FULL, "modest": MODEST, "fast": FAST}


def prompt_style(protocol: str) -> PromptStyle:
    """Train and score heads in the format the protocol evaluates (cloze: the bare question)."""
    return PromptStyle.CLOZE if protocol == Protocol.CLOZE.value else PromptStyle.ALPACA


def train_step(model: Any, splits: Any, budget: Budget, protocol: str, out: Path) -> dict[str, Any]:
    """Train JoLA and save the run directory (with the epoch-0 gates in gate_history.pt)."""
    config = jolalens.TrainConfig(
        epochs=budget.epochs,
        lr=budget.lr,
        warmup_steps=budget.warmup_steps,
        patience=budget.epochs,
        prompt_style=prompt_style(protocol),
        progress=False,
    )
    result = jolalens.train_jola(model, splits.train, splits.valid, config=config)
    result.save(out / "jola", overwrite=True)
    return result.summary()


def ablation_step(model: Any, splits: Any, budget: Budget, protocol: str, out: Path) -> dict[str, float]:
    """True mean-ablation and its attribution estimate on the same validation items."""
    items = splits.valid[: budget.n_ablation]
    style = prompt_style(protocol)
    times = {}
    # one example and 3 heads a pass: a pass holds 3 x choices sequences of 49k-vocabulary logits
    # (the default 8 examples x 9 heads took 8.6 GB of RAM on ARC-e)
    scorers = (
        (
            "attribution",
            lambda: attribution_scores(
                model, items, ablation="mean", reference=splits.train, batch_size=2, style=style
            ),
        ),
        (
            "mean",
            lambda: ablation_scores(
                model, items, ablation="mean", reference=splits.train, batch_size=1, heads_per_pass=3, style=style
            ),
        ),
    )
    for name, scorer in scorers:
        t0 = time.perf_counter()
        scores = scorer()
        scores.save(out / "jola" / "ablation" / f"{name}.pt")
        times[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
    return times


def eval_step(model: Any, splits: Any, task: str, protocol: str, out: Path) -> dict[str, Any]:
    """Zero-shot and JoLA on the test items, one row per item."""
    edit = jolalens.load_edit(out / "jola" / "edit", model)
    summaries = {}
    (out / "eval").mkdir(parents=True, exist_ok=True)
    for name, ed in (("zeroshot", None), ("jola", edit)):
        result = evaluate(model, splits.test, task, edit=ed, protocol=protocol, progress=False)
        result.items.to_csv(out / "eval" / f"{name}.csv.gz", index=False)
        summaries[name] = result.summary
    (out / "eval" / "summary.json").write_text(json.dumps(summaries, indent=2, default=str) + "\n")
    return {k: v.get("accuracy") for k, v in summaries.items()}


def compare_step(model: Any, task: str, protocol: str, budget: Budget, out: Path) -> Path:
    """A small fresh `jolalens compare` of :data:`COMPARE_METHODS` (when no finished one is given)."""
    from jolalens.compare import CompareConfig, run_compare

    n_train, n_valid, n_test, epochs = budget.compare_sizes
    config = CompareConfig(
        methods=COMPARE_METHODS,
        tasks=(task,),
        seeds=(0,),
        n_train=n_train,
        n_valid=n_valid,
        n_test=n_test,
        protocol=protocol,
        budget=1,
        train=jolalens.TrainConfig(epochs=epochs, warmup_steps=2, progress=False),
    )
    run_compare(model, config, out / "compare", log=log.info)
    return out / "compare"


def _check_compare_dir(path: Path, task: str, protocol: str) -> Path:
    config = json.loads((path / "compare_config.json").read_text())
    if config["protocol"]["protocol"] != protocol:
        raise SystemExit(
            f"{path} was scored with protocol {config['protocol']['protocol']!r}, not {protocol!r}: "
            "pass --compare-dir of a matching comparison, or --fresh-compare"
        )
    missing = [m for m in COMPARE_METHODS if not (path / "runs" / task / m / "seed0" / "result.json").is_file()]
    if missing:
        raise SystemExit(f"{path} lacks finished {task} runs of {missing}: pass --fresh-compare")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument(
        "--protocol",
        default=Protocol.CLOZE.value,
        help="cloze (default: where the embedded model is above chance) or loglik",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: runs/notebooks/<task>")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="run sizes (see the Budget table)")
    parser.add_argument("--fast", action="store_true", help="--budget fast: exercises the code, shows nothing")
    parser.add_argument(
        "--compare-dir",
        type=Path,
        default=None,
        help="a finished comparison for notebook 03 (default: the committed paper grid, loglik only)",
    )
    parser.add_argument("--fresh-compare", action="store_true", help="run a small comparison instead of reading one")
    parser.add_argument("--steps", default="train,ablation,eval,compare", help="comma list of steps to (re)run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    protocol = Protocol(args.protocol).value  # an unknown protocol fails here, before any work
    budget = BUDGETS["fast" if args.fast else args.budget]
    out = args.out or Path("runs") / "notebooks" / args.task
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update(
        command=" ".join(["python", *map(shlex.quote, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])]),
        task=args.task,
        protocol=protocol,
        fast=budget is FAST,
        budget_name="fast" if args.fast else args.budget,
        budget=budget.__dict__,
        machine=f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
    )
    steps = set(args.steps.split(","))
    model = jolalens.load_model()
    splits = load_task_splits(
        args.task, n_train=budget.n_train, n_valid=budget.n_valid, n_test=budget.n_test, seed=42, protocol=protocol
    )
    timings = manifest.setdefault("seconds", {})

    def timed(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        value = fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        log.info("%s done in %.0f s: %s", name, timings[name], value)
        manifest_path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        return value

    if "train" in steps:
        manifest["train"] = timed("train", lambda: train_step(model, splits, budget, protocol, out))
    if "ablation" in steps:
        manifest["ablation"] = timed("ablation", lambda: ablation_step(model, splits, budget, protocol, out))
    if "eval" in steps:
        manifest["test_accuracy"] = timed("eval", lambda: eval_step(model, splits, args.task, protocol, out))
    if "compare" in steps:
        use_grid = protocol == Protocol.LOGLIK.value and budget is not FAST and PAPER_GRID_MAIN.is_dir()
        default = PAPER_GRID_MAIN if use_grid else None
        given = None if args.fresh_compare else (args.compare_dir or default)
        if given is not None:
            manifest["compare_dir"] = str(_check_compare_dir(given.resolve(), args.task, protocol))
        else:
            manifest["compare_dir"] = str(
                timed("compare", lambda: compare_step(model, args.task, protocol, budget, out)).resolve()
            )
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    log.info("wrote %s", manifest_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
