"""``jolalens train``: its flags and what it runs (one JoLA run, optionally data-parallel)."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .cli_loading import add_loading_args, loading_options
from .errors import JolaError

__all__ = ["add_train", "add_training_option_args", "training_options"]


def add_training_option_args(p: argparse.ArgumentParser) -> None:
    """The training-recipe flags ``train`` and ``compare`` share; :func:`training_options` reads them back."""
    p.add_argument(
        "--length-grouping",
        type=int,
        default=1,
        metavar="K",
        help="cut each run of K shuffled batches by length: less padding, other batches than the paper's (1: off)",
    )
    p.add_argument(
        "--checkpoint-activations",
        action="store_true",
        help="recompute each layer's activations in the backward: less memory, ~1/3 more time per step, same results",
    )
    p.add_argument(
        "--answer-eos",
        action="store_true",
        help="train the end-of-sequence token after each answer (the paper does not), so generation stops",
    )


def training_options(args: argparse.Namespace) -> dict[str, Any]:
    """``TrainConfig`` keywords from :func:`add_training_option_args`' flags."""
    return {
        "answer_eos": args.answer_eos,
        "checkpoint_activations": args.checkpoint_activations,
        "length_grouping": args.length_grouping,
    }


def add_train(sub: argparse._SubParsersAction) -> None:
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
    add_training_option_args(p)
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
        **training_options(args),
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
