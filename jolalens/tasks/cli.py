"""``jolalens eval`` and ``jolalens tasks``: wire with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _cmd_tasks(args: argparse.Namespace) -> int:
    import pandas as pd

    from .registry import list_tasks

    df = list_tasks(with_sizes=True)
    if args.family:
        df = df[df["family"] == args.family]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 60):
        _out(df[["task", "family", "train", "valid", "test", "source", "licence", "metric"]].to_string(index=False))
    _out(
        "\nSplit sizes are shown once a task's data is cached (first use converts it); "
        "MMLU-Pro is not available offline: the NLU tasks are MMLU grouped into its 14 domains."
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import jolalens

    from ..atomic_dir import check_writable
    from ..data import PromptStyle, read_jsonl
    from ..evaluate import Protocol, evaluate
    from ..fileio import atomic_path
    from ..validation import check_positive_int
    from .splits import custom_task, load_task_splits

    if args.out:
        check_writable(Path(args.out) / "items.jsonl")  # before the evaluation, not after it
    # sizes >= 1: --n-test -1 silently dropped the last item
    for option in ("n_test", "batch_size", "num_beams", "max_new_tokens"):
        if getattr(args, option) is not None:
            check_positive_int(getattr(args, option), "--" + option.replace("_", "-"))
    if Path(args.task).suffix == ".jsonl":
        examples = read_jsonl(args.task)
        if args.n_test is not None:
            examples = examples[: args.n_test]
        task = custom_task(examples, name=Path(args.task).stem)
    else:
        from .registry import get_task

        task = get_task(args.task)
        examples = load_task_splits(task, n_train=0, n_valid=0, n_test=args.n_test, protocol=args.protocol).test
    from ..cli import loading_options

    model = jolalens.load_model(args.model, **loading_options(args))
    edit = None
    if args.edit:
        from jolalens import load_edit  # provided by the package root

        edit = load_edit(args.edit, model)
    result = evaluate(
        model,
        examples,
        task,
        edit=edit,
        protocol=Protocol(args.protocol),
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        style=PromptStyle(args.prompt),
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        # whole files or the previous ones, never a 0-byte one
        with atomic_path(out / "items.jsonl") as tmp:
            result.items.to_json(tmp, orient="records", lines=True, force_ascii=False)
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(json.dumps(result.summary, indent=2, default=str) + "\n")
    _out(json.dumps(result.summary, indent=2, default=str))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` and ``tasks`` subcommands to the ``jolalens`` parser."""
    tasks = subparsers.add_parser("tasks", help="list benchmark tasks with split sizes and sources")
    tasks.add_argument("--family", choices=["commonsense", "nlu", "nlg"])
    tasks.set_defaults(func=_cmd_tasks)

    ev = subparsers.add_parser("eval", help="evaluate a model (optionally with an edit) on a task")
    ev.add_argument("--model", default="smollm2-135m-instruct")
    ev.add_argument("--edit", help="directory of a saved edit (zero-shot without it)")
    ev.add_argument("--task", required=True, help="registered task name (see `jolalens tasks`) or a test .jsonl file")
    ev.add_argument(
        "--protocol",
        choices=["gen", "loglik", "cloze"],
        default="loglik",
        help="cloze: lm-eval's scoring of the option texts after the raw context (acc, acc_norm)",
    )
    ev.add_argument("--n-test", type=int, default=None, help="fixed seeded test subset of N (default: full split)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--num-beams", type=int, default=4, help="beam width for --protocol gen (1 = greedy)")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="default: 16, or 64 for NLG tasks")
    ev.add_argument("--prompt", choices=["alpaca", "chat"], default="alpaca")
    ev.add_argument("--out", help="directory for items.jsonl and summary.json")
    from ..cli import add_loading_args

    add_loading_args(ev)
    ev.set_defaults(func=_cmd_eval)


if __name__ == "__main__":  # pragma: no cover - convenience entry for manual runs
    parser = argparse.ArgumentParser(prog="jolalens")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.func(ns))
