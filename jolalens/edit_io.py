"""An edit's directory on disk: its files, the method registry that reloads it, reading and writing.

A saved edit is a directory holding ``jola_config.json`` (format version, method, model
identity, the method's config, the weights' checksum) and ``jola_weights.safetensors``.
:func:`register_method` records which :class:`jolalens.edit.Edit` subclass reloads each
``method``; :func:`load_edit` picks it from the config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic_dir import atomic_dir
from .errors import EditLoadError
from .validation import nonfinite_tensors

if TYPE_CHECKING:
    from .edit import Edit

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "load_edit",
    "prepare_output_dir",
    "read_edit_dir",
    "register_method",
    "write_edit_dir",
]

CONFIG_FILE = "jola_config.json"
WEIGHTS_FILE = "jola_weights.safetensors"
FORMAT_VERSION = 1

_METHODS: dict[str, type[Edit]] = {}


def register_method(cls: type[Edit]) -> type[Edit]:
    """Class decorator: make ``cls`` loadable by :func:`load_edit` under ``cls.method``."""
    if cls.method in _METHODS and _METHODS[cls.method] is not cls:
        raise ValueError(f"edit method {cls.method!r} is already registered")
    _METHODS[cls.method] = cls
    return cls


def prepare_output_dir(path: str | Path, *, overwrite: bool) -> Path:
    """An empty directory to write into; an existing non-empty one needs ``overwrite=True``."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise FileExistsError(
                f"{path} already exists and is not empty; choose a new directory or pass "
                "overwrite=True (--overwrite on the command line)"
            )
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_edit_dir(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, overwrite: bool
) -> Path:
    """Write ``tensors`` and ``meta`` (plus the weights' checksum) as a saved edit directory.

    Written aside and renamed into place when complete: the directory is whole or absent.
    """
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:  # complete or absent, never a mix
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"method": str(meta.get("method"))})
        # the config, written last, marks completion
        meta["weights_sha256"] = _sha256(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_edit_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    cfg_file, w_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not cfg_file.is_file() or not w_file.is_file():
        raise EditLoadError(f"{path} is not a saved jolalens edit: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EditLoadError(
            f"{cfg_file}: invalid JSON or not UTF-8 ({exc}); the edit is damaged: retrain or restore it"
        ) from exc
    if not isinstance(meta, dict):
        raise EditLoadError(f"{cfg_file}: expected a JSON object; the edit is damaged: retrain or restore it")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise EditLoadError(
            f"{cfg_file}: format_version must be a non-negative integer, got "
            f"{version!r}; the config is damaged: retrain or restore it"
        )
    if version > FORMAT_VERSION:
        raise EditLoadError(
            f"{cfg_file} uses format {version}, newer than this jolalens understands "
            f"({FORMAT_VERSION}); upgrade jolalens"
        )
    if not isinstance(meta.get("model"), dict) or not meta["model"]:
        raise EditLoadError(
            f'{cfg_file} has no "model" block, so the edit cannot be checked '
            "against the model; restore the config or retrain the edit"
        )
    if not isinstance(meta.get("config", {}), dict):
        raise EditLoadError(f'{cfg_file}: "config" must be a JSON object; restore the config or retrain the edit')
    expected = meta.get("weights_sha256")
    if expected is not None and expected != _sha256(w_file):
        raise EditLoadError(
            f"{w_file} does not match the checksum in {CONFIG_FILE} (truncated "
            "or replaced); retrain the edit or restore both files together"
        )
    try:
        tensors = load_file(str(w_file))
    except Exception as exc:  # safetensors raises its own SafetensorError on a damaged file
        raise EditLoadError(
            f"{w_file} is not a readable safetensors file ({exc}); retrain or restore the edit"
        ) from exc
    bad = nonfinite_tensors(tensors)
    if bad:
        raise EditLoadError(
            f"{w_file} holds NaN/inf weights in {bad[:5]}; this edit is unusable: retrain it with a lower learning rate"
        )
    return meta, tensors


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_edit(path: str | Path, model: nn.Module) -> Edit:
    """Load any saved jolalens edit onto ``model``, choosing the class from its config."""
    meta, _ = read_edit_dir(path)
    method = meta.get("method")
    if method not in _METHODS:
        raise EditLoadError(f"{path} holds an edit of unknown method {method!r}; known: {sorted(_METHODS)}")
    return _METHODS[method].load(path, model)
