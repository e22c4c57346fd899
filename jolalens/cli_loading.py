"""The model-loading flags every ``jolalens`` command that loads a model shares."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import JolaError
from .hooked_loading import MODEL_CLASSES, require_hooked_transformer

__all__ = ["add_loading_args", "loading_options"]


def add_loading_args(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--device-map``, ``--max-memory``, ``--revision``, ``--model-class``.

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
    g.add_argument(
        "--model-class",
        choices=list(MODEL_CLASSES),
        default="bridge",
        help="bridge (default): a TransformerBridge; hooked-transformer: the classic HookedTransformer "
        "of the same weights, unprocessed (needs transformer-lens 3.x)",
    )


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
    """Keyword arguments for :func:`jolalens.load_model` from :func:`add_loading_args` flags.

    ``--model-class hooked-transformer`` is checked here, before any data or model is read: it
    needs TransformerLens 3.x and loads on one device (no ``--device-map``).
    """
    if args.model_class == "hooked-transformer":
        require_hooked_transformer()
        if args.device_map is not None:
            raise JolaError(
                "--device-map splits a TransformerBridge over devices; --model-class hooked-transformer "
                "loads on one device: drop --device-map and give --device"
            )
    max_memory = _json_option(args.max_memory, "--max-memory")
    if isinstance(max_memory, dict):  # GPU indices arrive as JSON strings
        max_memory = {int(k) if str(k).isdigit() else k: v for k, v in max_memory.items()}
    return {
        "device": args.device,
        "dtype": args.dtype,
        "device_map": _json_option(args.device_map, "--device-map"),
        "max_memory": max_memory,
        "revision": args.revision,
        "model_class": args.model_class,
    }
