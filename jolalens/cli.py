"""The ``jolalens`` command line: train, compare, eval, tasks, figures, export, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import JolaError

__all__ = ["build_parser", "main"]


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
    p.add_argument("--lam", type=float, default=None, help="sparsity weight (paper mode); default: SparsityConfig().lam")
    p.add_argument("--penalty", choices=["paper", "released"], default="paper")
    p.add_argument("--edit-type", choices=["both", "additive", "multiplicative"], default="both")
    p.add_argument("--gates", choices=["separate", "shared", "none"], default="separate")
    p.add_argument("--layers", help="comma-separated layer indices to edit (default: all)")
    p.add_argument("--backend", choices=["hf_view", "hook_points"], default="hf_view")
    p.add_argument("--prompt", choices=["alpaca", "chat", "cloze"], default="alpaca")
    p.add_argument("--protocol", choices=["label", "cloze"], default="label",
                   help="cloze: lm-eval's rendering of --task, trained on the gold option's text (implies --prompt cloze)")
    p.add_argument("--max-length", type=int, default=400)
    p.add_argument("--answer-eos", action="store_true",
                   help="train the end-of-sequence token after each answer (the paper does not), so generation stops")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)


def _load_training_data(args: argparse.Namespace):
    from .data import read_jsonl, sample_examples

    if args.task:
        if args.train or args.valid:
            raise JolaError("give either --task or --train/--valid, not both")
        from .tasks import load_task_splits

        splits = load_task_splits(args.task, n_train=args.n_train, n_valid=args.n_valid, n_test=0, seed=args.seed,
                                  protocol=getattr(args, "protocol", None))
        return splits.train, splits.valid
    if not args.train or not args.valid:
        raise JolaError("give --train and --valid JSONL files, or --task NAME (see `jolalens tasks`)")
    train = sample_examples(read_jsonl(args.train), args.n_train, args.seed)
    valid = sample_examples(read_jsonl(args.valid), args.n_valid, args.seed + 1)
    return train, valid


def _cmd_train(args: argparse.Namespace) -> int:
    from .edit import prepare_output_dir
    from .jola import JolaConfig, selected_heads
    from .models import load_model
    from .train import SparsityConfig, TrainConfig, train_jola

    prepare_output_dir(args.out, overwrite=args.overwrite)  # fail before the long work, not after
    if args.protocol == "cloze":
        args.prompt = "cloze"
    train, valid = _load_training_data(args)
    layers = tuple(int(x) for x in args.layers.split(",")) if args.layers else None
    jola = JolaConfig(layers=layers, edit_type=args.edit_type, gate_mode=args.gates, seed=args.seed)
    config = TrainConfig(
        lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, backend=args.backend,
        prompt_style=args.prompt, max_length=args.max_length, progress=not args.no_progress, answer_eos=args.answer_eos,
    )
    sparsity = SparsityConfig(mode=args.penalty, **({"lam": args.lam} if args.lam is not None else {}))
    print(f"Loading {args.model} ...")
    model = load_model(args.model)
    print(f"Training JoLA on {len(train)} examples, validating on {len(valid)} ...")
    result = train_jola(model, train, valid, jola=jola, config=config, sparsity=sparsity)
    result.save(args.out, overwrite=True)
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


def _add_figures(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="heatmaps and curves from a training run directory")
    p.add_argument("--run", type=Path, required=True, help="a directory written by `jolalens train`")
    p.add_argument("--out", type=Path, default=Path("figures"))
    p.set_defaults(func=_cmd_figures)


def _cmd_figures(args: argparse.Namespace) -> int:
    from .analysis.report import make_figures

    command = "jolalens figures --run " + str(args.run) + " --out " + str(args.out)
    paths = make_figures(args.run, args.out, command=command)
    for path in paths:
        print(path)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="fold a saved JoLA edit into o_proj and write a Hugging Face checkpoint")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--edit", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .edit import load_edit
    from .merge import export_hf_checkpoint
    from .models import load_model

    model = load_model(args.model)
    edit = load_edit(args.edit, model)
    out = export_hf_checkpoint(model, edit, args.out, overwrite=args.overwrite)
    print(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded model (what `make demo` runs)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.set_defaults(func=lambda args: __import__("jolalens.demo", fromlist=["run_demo"]).run_demo(model_name=args.model))


def _csv(kind):
    def parse(text: str):
        return tuple(kind(x) for x in text.split(",") if x.strip())

    return parse


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="JoLA vs baselines: one run per (method, task, seed), resumable")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--methods", type=_csv(str), default=("jola", "iti", "red", "lofit", "lora", "bitfit", "zeroshot"),
                   help="comma-separated, from: jola,iti,red,lofit,lora,bitfit,zeroshot (default: these seven) "
                        "and the JoLA ablations jola_additive,jola_multiplicative,jola_shared_gate,jola_no_gate")
    p.add_argument("--tasks", type=_csv(str), required=True, help="comma-separated task names (see `jolalens tasks`)")
    p.add_argument("--seeds", type=_csv(int), default=(0,), help="comma-separated seeds (data sample and training)")
    p.add_argument("--out", type=Path, required=True, help="comparison directory (rerun the same command to resume)")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-valid", type=int, default=200)
    p.add_argument("--n-test", type=int, default=500, help="fixed test subset per task (0: the full split)")
    p.add_argument("--protocol", choices=["loglik", "gen", "cloze"], default="loglik",
                   help="cloze: lm-eval's option-text scoring (acc, acc_norm), training on the gold option's text")
    p.add_argument("--budget", type=int, default=2, help="hyper-parameter points tried per method (same for all)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--max-length", type=int, default=400)
    p.add_argument("--answer-eos", action="store_true",
                   help="train the end-of-sequence token after each answer (the paper does not), so generation stops")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import CompareConfig, run_compare
    from .models import load_model
    from .tasks.registry import get_task
    from .train import TrainConfig

    for task in args.tasks:
        get_task(task)  # unknown names fail before the model loads
    train = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, patience=args.patience, warmup_steps=args.warmup_steps,
        max_length=args.max_length, progress=not args.no_progress, answer_eos=args.answer_eos,
    )
    config = CompareConfig(
        methods=args.methods, tasks=args.tasks, seeds=args.seeds, n_train=args.n_train, n_valid=args.n_valid,
        n_test=args.n_test or None, protocol=args.protocol, budget=args.budget, train=train,
    )
    print(f"Loading {args.model} ...")
    model = load_model(args.model)
    results = run_compare(model, config, args.out)
    print((args.out / "summary.md").read_text())
    failed = int((results["status"] == "failed").sum()) if "status" in results else 0
    print(f"tables in {args.out}/summary.md, summary.csv, results.csv" + (f"; {failed} run(s) failed" if failed else ""))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jolalens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_figures(sub)
    _add_export(sub)
    _add_demo(sub)
    _add_compare(sub)
    from .tasks.cli import register

    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (JolaError, FileExistsError) as exc:
        print(f"jolalens {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
