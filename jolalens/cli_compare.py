"""``jolalens compare``: its flags and what it runs (locally or on a Ray cluster)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_loading import add_loading_args, loading_options
from .cli_train import add_training_option_args, training_options

__all__ = ["add_compare"]


def _csv(kind):
    def parse(text: str):
        return tuple(kind(x) for x in text.split(",") if x.strip())

    return parse


def _methods_help() -> str:
    """The choices of ``compare --methods``, from the method registry (:mod:`jolalens.methods`)."""
    from .methods import METHODS, default_methods

    defaults = default_methods()
    others = [n for n, s in METHODS.items() if n not in defaults and s.ablation_of is None]
    ablations = [n for n, s in METHODS.items() if s.ablation_of is not None]
    return (
        f"comma-separated, from: {','.join(defaults)} (default: these {len(defaults)})"
        + (f", {','.join(others)}" if others else "")
        + (f" and the ablations {','.join(ablations)}" if ablations else "")
    )


def add_compare(sub: argparse._SubParsersAction) -> None:
    from .methods import default_methods

    p = sub.add_parser("compare", help="JoLA vs baselines: one run per (method, task, seed), resumable")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--methods", type=_csv(str), default=default_methods(), help=_methods_help())
    p.add_argument("--tasks", type=_csv(str), required=True, help="comma-separated task names (see `jolalens tasks`)")
    p.add_argument("--seeds", type=_csv(int), default=(0,), help="comma-separated seeds (data sample and training)")
    p.add_argument("--out", type=Path, required=True, help="comparison directory (rerun the same command to resume)")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-valid", type=int, default=200)
    p.add_argument("--n-test", type=int, default=500, help="fixed test subset per task (0: the full split)")
    p.add_argument(
        "--protocol",
        choices=["loglik", "gen", "cloze"],
        default="loglik",
        help="cloze: lm-eval's option-text scoring (acc, acc_norm), training on the gold option's text",
    )
    p.add_argument("--budget", type=int, default=2, help="hyper-parameter points tried per method (same for all)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--max-length", type=int, default=400)
    add_training_option_args(p)
    p.add_argument("--no-progress", action="store_true")
    ray = p.add_argument_group("engine (docs/scale-out.md)")
    ray.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: one cell after another in this process; ray: one Ray task per cell",
    )
    ray.add_argument("--address", default=None, help="ray: an existing cluster (e.g. auto); default: start a local one")
    ray.add_argument("--num-cpus", type=int, default=None, help="ray: CPUs of the local cluster (default: all)")
    ray.add_argument("--cpus-per-cell", type=float, default=1.0, help="ray: CPUs each cell reserves")
    ray.add_argument(
        "--gpus-per-cell",
        type=float,
        default=0.0,
        help="ray: GPU share each cell reserves, e.g. 0.25 puts four cells on one GPU (0: CPU)",
    )
    ray.add_argument("--max-retries", type=int, default=2, help="ray: reruns of a cell whose worker died")
    add_loading_args(p)
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import CompareConfig, run_compare
    from .locking import output_lock
    from .models import load_model
    from .tasks.registry import get_task
    from .train import TrainConfig

    for task in args.tasks:
        get_task(task)  # unknown names fail before the model loads
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        warmup_steps=args.warmup_steps,
        max_length=args.max_length,
        progress=not args.no_progress,
        **training_options(args),
    )
    config = CompareConfig(
        methods=args.methods,
        tasks=args.tasks,
        seeds=args.seeds,
        n_train=args.n_train,
        n_valid=args.n_valid,
        n_test=args.n_test or None,
        protocol=args.protocol,
        budget=args.budget,
        train=train,
    )
    with output_lock(args.out, "jolalens compare"):
        pass  # a busy --out fails now, before the model loads; the engine then holds the lock
    if args.engine == "ray":
        from functools import partial

        from .engines.ray_engine import RayEngineConfig, run_compare_ray

        engine = RayEngineConfig(
            address=args.address,
            num_cpus=args.num_cpus,
            cpus_per_cell=args.cpus_per_cell,
            gpus_per_cell=args.gpus_per_cell,
            max_retries=args.max_retries,
            progress=not args.no_progress,
        )
        options = loading_options(args)
        if args.gpus_per_cell > 0 and options["device"] is None:
            options["device"] = "cuda"
        factory = partial(load_model, args.model, **options)
        results = run_compare_ray(factory, config, args.out, engine)
    else:
        print(f"Loading {args.model} ...")
        model = load_model(args.model, **loading_options(args))
        results = run_compare(model, config, args.out, exclusive=True)  # one process per --out
    print((args.out / "summary.md").read_text())
    failed = int((results["status"] == "failed").sum()) if "status" in results else 0
    print(
        f"tables in {args.out}/summary.md, summary.csv, results.csv" + (f"; {failed} run(s) failed" if failed else "")
    )
    return 1 if failed else 0
