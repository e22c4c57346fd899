"""The ``jolalens`` command line: train, compare, eval, tasks, figures, export, demo."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .cli_errors import add_verbose_flag, report_error
from .errors import JolaError

__all__ = ["add_loading_args", "build_parser", "loading_options", "main"]


def add_loading_args(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--device-map``, ``--max-memory``, ``--revision``.

    How every command that loads a model loads it; :func:`loading_options` reads them back.
    """
    g = p.add_argument_group("model loading")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    g.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="model weights' dtype (default auto: bfloat16 on a GPU that supports it, else "
        "float32); edits stay float32",
    )
    g.add_argument(
        "--device-map",
        help="split the model over devices with accelerate: auto, balanced, sequential, "
        "a JSON object {module: device} or a .json file holding one",
    )
    g.add_argument(
        "--max-memory",
        help='with --device-map: JSON per-device budget, e.g. \'{"0": "20GiB", "cpu": "60GiB"}\'',
    )
    g.add_argument("--revision", help="hub revision (branch, tag or commit) of --model")


def _json_option(text: str | None, flag: str) -> Any:
    if text is None:
        return None
    if text.endswith(".json") and Path(text).is_file():
        text = Path(text).read_text()
    if not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JolaError(f"{flag}: invalid JSON ({exc.msg}); give a name like 'auto' or a JSON object") from exc


def loading_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`jolalens.load_model` from :func:`add_loading_args` flags."""
    max_memory = _json_option(args.max_memory, "--max-memory")
    if isinstance(max_memory, dict):  # GPU indices arrive as JSON strings
        max_memory = {int(k) if str(k).isdigit() else k: v for k, v in max_memory.items()}
    return {
        "device": args.device,
        "dtype": args.dtype,
        "device_map": _json_option(args.device_map, "--device-map"),
        "max_memory": max_memory,
        "revision": args.revision,
    }


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a JoLA edit on JSONL files or a registered task")
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded model or Hugging Face name")
    src = p.add_argument_group("data (either --train/--valid JSONL files or --task)")
    src.add_argument("--train", type=Path, help='JSONL with {"instruction": ..., "answer": ...} per line')
    src.add_argument("--valid", type=Path, help="JSONL validation file (early stopping)")
    src.add_argument("--task", help="a task from `jolalens tasks`")
    src.add_argument("--n-train", type=int, default=200)
    src.add_argument("--n-valid", type=int, default=200)
    p.add_argument("--out", type=Path, required=True, help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="allow writing into an existing non-empty --out")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--lam", type=float, default=None, help="sparsity weight (paper mode); default: SparsityConfig().lam"
    )
    p.add_argument("--penalty", choices=["paper", "released"], default="paper")
    p.add_argument("--edit-type", choices=["both", "additive", "multiplicative"], default="both")
    p.add_argument("--gates", choices=["separate", "shared", "none"], default="separate")
    p.add_argument("--layers", help="comma-separated layer indices to edit (default: all)")
    p.add_argument("--backend", choices=["auto", "hf_view", "hook_points"], default="auto")
    p.add_argument("--prompt", choices=["alpaca", "chat", "cloze"], default="alpaca")
    p.add_argument(
        "--protocol",
        choices=["label", "cloze"],
        default="label",
        help="cloze: lm-eval's rendering of --task, trained on the gold option's text (implies --prompt cloze)",
    )
    p.add_argument("--max-length", type=int, default=400)
    p.add_argument(
        "--answer-eos",
        action="store_true",
        help="train the end-of-sequence token after each answer (the paper does not), so generation stops",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="one rank of `accelerate launch --num_processes N -m jolalens.cli train --distributed ...`: "
        "each process trains on a shard of every batch; rank 0 writes --out (docs/scale-out.md)",
    )
    add_loading_args(p)
    p.set_defaults(func=_cmd_train)


def _load_training_data(args: argparse.Namespace):
    from .data import read_jsonl, sample_examples

    if args.task:
        if args.train or args.valid:
            raise JolaError("give either --task or --train/--valid, not both")
        from .tasks import load_task_splits

        splits = load_task_splits(
            args.task,
            n_train=args.n_train,
            n_valid=args.n_valid,
            n_test=0,
            seed=args.seed,
            protocol=getattr(args, "protocol", None),
        )
        return splits.train, splits.valid
    if not args.train or not args.valid:
        raise JolaError("give --train and --valid JSONL files, or --task NAME (see `jolalens tasks`)")
    train = sample_examples(read_jsonl(args.train), args.n_train, args.seed)
    valid = sample_examples(read_jsonl(args.valid), args.n_valid, args.seed + 1)
    return train, valid


def _cmd_train(args: argparse.Namespace) -> int:
    from .atomic_dir import check_free_space, check_replaceable, check_writable
    from .jola import JolaConfig, JolaEdit, selected_heads
    from .locking import output_lock
    from .models import load_model
    from .train import SparsityConfig, TrainConfig, train_jola
    from .validation import parse_layers

    # every option is checked before the lock, the data and the model (same rules as the Python API)
    layers = parse_layers(args.layers)
    dp = _data_parallel_group(args)
    if dp is not None and not dp.is_main:
        _quiet_rank()
    if args.protocol == "cloze":
        args.prompt = "cloze"
    jola = JolaConfig(layers=layers, edit_type=args.edit_type, gate_mode=args.gates, seed=args.seed)
    config = TrainConfig(
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        backend=args.backend,
        prompt_style=args.prompt,
        max_length=args.max_length,
        progress=not args.no_progress,
        answer_eos=args.answer_eos,
    )
    sparsity = SparsityConfig(mode=args.penalty, **({"lam": args.lam} if args.lam is not None else {}))
    from .distributed import data_parallel

    options = loading_options(args)
    if dp is not None:
        options["device"] = dp.device
    main_rank = dp is None or dp.is_main
    with output_lock(args.out, "jolalens train") if main_rank else nullcontext():
        if main_rank:  # fail before the long work, not after
            check_replaceable(args.out, overwrite=args.overwrite)
            check_writable(args.out)
        train, valid = _load_training_data(args)
        print(f"Loading {args.model} ...")
        model = load_model(args.model, **options)
        if main_rank:
            shaped = JolaEdit.for_model(model, jola)
            edit_bytes = sum(p.numel() * p.element_size() for p in shaped.parameters())
            # the edit, its gate history, the tables
            check_free_space(args.out, 3 * edit_bytes + (1 << 20))
        print(f"Training JoLA on {len(train)} examples, validating on {len(valid)} ...")
        with data_parallel(dp):
            result = train_jola(model, train, valid, jola=jola, config=config, sparsity=sparsity)
        if not main_rank:
            return 0  # rank 0 alone writes the run directory and reports
        # the old run is replaced only now, when the new one is complete
        result.save(args.out, overwrite=args.overwrite)
    s = result.summary()
    closed = ", ".join(f"{k} {v:.0%}" for k, v in s["closed_fraction"].items())
    print(
        f"best epoch {s['best_epoch']}/{s['epochs_run']}: val CE {s['val_ce_first_epoch']:.4f} (epoch 1) -> "
        f"{s['val_ce_best']:.4f}; closed gates: {closed}; {s['seconds']:.0f} s"
    )
    heads = selected_heads(result.edit)
    print(f"{len(heads)} (head, type) edits stay open; the strongest:")
    print(heads.head(10).to_string(index=False))
    print(f"saved to {args.out}")
    return 0


def _data_parallel_group(args: argparse.Namespace):
    """The data-parallel group of ``--distributed`` (``None`` without it); refuses a silent duplicate run."""
    from .distributed import DataParallel, launched_with_several_processes

    if not args.distributed:
        if launched_with_several_processes():
            raise JolaError(
                "this process is one of several (WORLD_SIZE > 1): add --distributed, "
                "or every process would train the whole run and write --out"
            )
        return None
    return DataParallel.from_accelerate()


def _quiet_rank() -> None:
    """Ranks other than 0 print nothing (rank 0 reports for all of them); their errors still reach stderr."""
    import logging
    import os

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of this process)
    logging.getLogger("jolalens").setLevel(logging.WARNING)


def _add_figures(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="heatmaps and curves from a training run directory")
    p.add_argument("--run", type=Path, required=True, help="a directory written by `jolalens train`")
    p.add_argument("--out", type=Path, default=None, help="default: <run>/figures (never the repository's figures/)")
    p.set_defaults(func=_cmd_figures)


def _cmd_figures(args: argparse.Namespace) -> int:
    from .analysis.report import make_figures

    out = args.out if args.out is not None else args.run / "figures"
    command = "jolalens figures --run " + str(args.run) + " --out " + str(out)
    paths = make_figures(args.run, out, command=command)
    for path in paths:
        print(path)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="fold a saved JoLA edit into o_proj and write a Hugging Face checkpoint")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--edit", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    add_loading_args(p)
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .atomic_dir import check_replaceable, check_writable
    from .edit import load_edit
    from .locking import output_lock
    from .merge import export_hf_checkpoint
    from .models import load_model

    with output_lock(args.out, "jolalens export"):
        check_replaceable(args.out, overwrite=args.overwrite)
        check_writable(args.out)
        model = load_model(args.model, **loading_options(args))
        edit = load_edit(args.edit, model)
        out = export_hf_checkpoint(model, edit, args.out, overwrite=args.overwrite)
    print(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded model (what `make demo` runs)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    add_loading_args(p)
    p.set_defaults(
        func=lambda args: __import__("jolalens.demo", fromlist=["run_demo"]).run_demo(
            model_name=args.model, load_options=loading_options(args)
        )
    )


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


def _add_compare(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--answer-eos",
        action="store_true",
        help="train the end-of-sequence token after each answer (the paper does not), so generation stops",
    )
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
        answer_eos=args.answer_eos,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jolalens", description=__doc__)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="count", default=0, help="debug log messages")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_figures(sub)
    _add_export(sub)
    _add_demo(sub)
    _add_compare(sub)
    from .tasks.cli import register

    register(sub)
    add_verbose_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; an expected failure is one line on stderr, exit code 2 (cli_errors)."""
    args = build_parser().parse_args(argv)
    from .log_setup import configure_logging

    configure_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:
        return report_error(exc, verbose=bool(getattr(args, "verbose", False)))


if __name__ == "__main__":
    sys.exit(main())
