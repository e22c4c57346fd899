"""Head dimensions, hook names and the identity of a TransformerLens model.

Loading a model (offline, from an embedded GGUF file, a checkpoint directory or the hub)
lives in :mod:`jolalens.model_loading`; its public names are re-exported here.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .model_loading import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    EmbeddedModel,
    _is_transformer_lens_model,
    cache_dir,
    load_model,
)
from .model_loading import _converted_checkpoint as _converted_checkpoint  # benchmarks and integration tests use it

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "ModelDims",
    "cache_dir",
    "hook_z_name",
    "identity_mismatches",
    "is_hooked_transformer",
    "load_model",
    "model_dims",
    "model_identity",
    "weights_fingerprint",
]


@dataclass(frozen=True)
class ModelDims:
    """Attention shape of a model: what a per-head edit must match."""

    n_layers: int
    n_heads: int  # query heads: hook_z has this many
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int = 0  # MLP width; 0 when unknown (only MLP-site baselines need it)

    @property
    def n_head_slots(self) -> int:
        return self.n_layers * self.n_heads


def is_hooked_transformer(model: nn.Module) -> bool:
    """True for a model whose ``forward`` takes no ``position_ids`` (TransformerLens 3's class)."""
    if getattr(model, "original_model", None) is not None:
        return False  # a bridge forwards keyword arguments to its Hugging Face model
    try:
        params = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return False
    return "position_ids" not in params and "attention_mask" in params


def hook_z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def model_dims(model: nn.Module) -> ModelDims:
    """Layers, query heads, KV heads, d_head and d_model of a TransformerLens model.

    Works for a ``TransformerBridge`` and a legacy ``HookedTransformer`` alike; raises
    :class:`ModelError` when the model lacks ``blocks.{l}.attn.hook_z``.
    """
    if not _is_transformer_lens_model(model):
        raise ModelError(
            f"{type(model).__name__} is not a TransformerLens model (no hook_dict/cfg). "
            "Load it with jolalens.load_model(...) or TransformerBridge.boot_transformers(...)."
        )
    cfg = model.cfg
    try:
        n_layers = int(cfg.n_layers)
        n_heads = int(cfg.n_heads)
        d_head = int(cfg.d_head)
        d_model = int(cfg.d_model)
    except (AttributeError, TypeError) as exc:
        raise ModelError(f"{type(model).__name__}.cfg lacks n_layers/n_heads/d_head/d_model: {exc}") from exc
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    d_mlp = int(getattr(cfg, "d_mlp", None) or 0)
    missing = [hook_z_name(layer) for layer in range(n_layers) if hook_z_name(layer) not in model.hook_dict]
    if missing:
        raise ModelError(
            f"{type(model).__name__} has no hook point '{missing[0]}' "
            f"({len(missing)} of {n_layers} layers lack hook_z). jolalens edits each attention "
            "head's output at blocks.{l}.attn.hook_z [batch, pos, head_index, d_head]; use a "
            "TransformerLens model that exposes it (TransformerBridge or HookedTransformer)."
        )
    return ModelDims(
        n_layers=n_layers, n_heads=n_heads, n_kv_heads=int(n_kv), d_head=d_head, d_model=d_model, d_mlp=d_mlp
    )


_FINGERPRINT_ROWS = 32
_FINGERPRINT_RTOL = 8e-3  # about two bfloat16 steps: a float16 copy rounds twice
_FINGERPRINT_ATOL = 1e-3
_SHAPE_KEYS = ("d_vocab", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_model")


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> list[float] | None:
    """A few numbers of the token embedding ``W_E`` that any TransformerLens class reads alike.

    ``W_E`` rows are centred first (``HookedTransformer.from_pretrained`` centres them for
    LayerNorm models; RMSNorm folding leaves ``W_E`` alone), then for 32 evenly spaced tokens
    the row's norm and one entry are kept: 64 floats, compared with a tolerance, not hashed.
    The rows are rounded to bfloat16 first, so the same weights loaded in float32, bfloat16 or
    float16 give (nearly) the same fingerprint. ``None`` when the model exposes no ``W_E``.
    """
    w_e = getattr(model, "W_E", None)
    if not isinstance(w_e, torch.Tensor) or w_e.ndim != 2 or w_e.is_meta:
        return None
    d_vocab, d_model = w_e.shape
    rows = torch.linspace(0, d_vocab - 1, min(_FINGERPRINT_ROWS, d_vocab)).long().unique()
    picked = w_e[rows.to(w_e.device)].detach().to(torch.bfloat16).float().cpu()
    picked = picked - picked.mean(-1, keepdim=True)
    cols = (rows * 7919) % d_model
    values = torch.cat([picked.norm(dim=-1), picked[torch.arange(len(rows)), cols]])
    return [float(f"{v:.7g}") for v in values.tolist()]


def model_identity(model: nn.Module) -> dict[str, Any]:
    """What a saved edit records of its model: name, shape and a weights fingerprint.

    Two models are the same when shapes and :func:`weights_fingerprint` agree, whatever their
    Python class (a ``TransformerBridge`` and a ``HookedTransformer`` of the same weights are).
    """
    dims = model_dims(model)
    cfg = model.cfg
    identity: dict[str, Any] = {
        "model_name": str(getattr(cfg, "model_name", "unknown")),
        "architecture": str(
            getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None) or type(model).__name__
        ),
        "d_vocab": int(getattr(cfg, "d_vocab", -1)),
        **{k: getattr(dims, k) for k in ("n_layers", "n_heads", "n_kv_heads", "d_head", "d_model")},
    }
    fingerprint = weights_fingerprint(model)
    if fingerprint is not None:
        identity["weights_fingerprint"] = fingerprint
    return identity


def _base_name(name: Any) -> str:
    return str(name).rsplit("/", 1)[-1].lower()


def identity_mismatches(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Why ``got`` is not the model ``expected`` describes (empty list: the same model).

    Shapes must match. With a fingerprint on both sides the weights and the name decide
    (compared without the hub organisation: ``HookedTransformer`` names drop it) and the class
    may differ; an identity saved before fingerprints existed is checked by name, architecture
    and shape only, with a warning.
    """
    problems = [
        f"{k}: edit has {expected[k]!r}, model has {got.get(k)!r}"
        for k in _SHAPE_KEYS
        if k in expected and expected[k] != got.get(k)
    ]
    if problems:
        return problems
    want, have = expected.get("weights_fingerprint"), got.get("weights_fingerprint")
    if want is not None and have is not None:
        same = len(want) == len(have) and torch.allclose(
            torch.tensor(want), torch.tensor(have), rtol=_FINGERPRINT_RTOL, atol=_FINGERPRINT_ATOL
        )
        if not same:
            return [
                f"weights differ (embedding fingerprint of {expected.get('model_name')!r} vs {got.get('model_name')!r})"
            ]
        want_name, have_name = expected.get("model_name"), got.get("model_name")
        if _base_name(want_name) != _base_name(have_name):
            return [f"model_name: edit has {want_name!r}, model has {have_name!r}"]
        if expected.get("architecture") != got.get("architecture"):
            logger.info("same weights, other class: %r vs %r", expected.get("architecture"), got.get("architecture"))
        return []
    if want is None:
        logger.warning(
            "this edit was saved without a weights fingerprint (an older jolalens); checking the "
            "model by name and shape only"
        )
    skip = {"weights_fingerprint", *_SHAPE_KEYS}
    return [
        f"{k}: edit has {expected.get(k)!r}, model has {got.get(k)!r}"
        for k in expected
        if k not in skip and expected.get(k) != got.get(k)
    ]
