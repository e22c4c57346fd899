"""The ``jolalens`` command line: train, compare, eval, tasks, figures, export, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_compare import _methods_help as _methods_help  # tests read the help text here
from .cli_compare import add_compare
from .cli_errors import add_verbose_flag, report_error
from .cli_loading import add_loading_args, loading_options
from .cli_train import add_train

__all__ = ["add_loading_args", "build_parser", "loading_options", "main"]


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
    p = sub.add_parser(
        "export", help="fold a saved JoLA edit into the attention output projection and write a Hugging Face checkpoint"
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--edit", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    add_loading_args(p)
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .atomic_dir import check_replaceable, check_writable
    from .edit import load_edit
    from .hooked_loading import load_hf_source
    from .locking import output_lock
    from .merge import export_hf_checkpoint
    from .models import load_model

    with output_lock(args.out, "jolalens export"):
        check_replaceable(args.out, overwrite=args.overwrite)
        check_writable(args.out)
        options = loading_options(args)
        model = load_model(args.model, **options)
        edit = load_edit(args.edit, model)
        # a HookedTransformer holds no Hugging Face model: export the one it was converted from
        hf_model = load_hf_source(model) if options["model_class"] == "hooked-transformer" else None
        out = export_hf_checkpoint(model, edit, args.out, overwrite=args.overwrite, hf_model=hf_model)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jolalens", description=__doc__)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="count", default=0, help="debug log messages")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    _add_figures(sub)
    _add_export(sub)
    _add_demo(sub)
    add_compare(sub)
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
