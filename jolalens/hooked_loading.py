"""Load a classic ``HookedTransformer`` (TransformerLens 3.x) from the weights the bridge path uses.

``jolalens.load_model(name, model_class="hooked-transformer")`` (the command line's
``--model-class hooked-transformer``) comes here. The weights are the ones
:func:`jolalens.load_model` would wrap in a bridge: an embedded model's converted checkpoint
(SmolLM2's GGUF, de-quantised once and cached), a local checkpoint directory, or a hub name
(from the local cache when offline). The Hugging Face model is loaded with ``transformers`` and
converted with TransformerLens' own config and weight conversion for its architecture, without
weight processing (no LayerNorm folding, no centring, no value-bias folding: what
``HookedTransformer.from_pretrained_no_processing`` does), so the logits are the Hugging Face
model's. Nothing is downloaded for the embedded model or a directory: TransformerLens gets the
already-loaded model (``hf_model``) and its config from a temporary directory.

The model remembers its source (:func:`hf_source`), so the command line's ``export`` can hand
the matching Hugging Face model to :func:`jolalens.export.export_hf_checkpoint`.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_CLASSES",
    "hf_source",
    "hooked_transformer_available",
    "load_hf_source",
    "load_hooked_model",
    "load_unprocessed",
    "require_hooked_transformer",
]

MODEL_CLASSES = ("bridge", "hooked-transformer")
DEFAULT_N_CTX = 2048  # HookedTransformer keeps an [n_ctx, n_ctx] mask per layer: 8192 would cost GBs
_SOURCE_ATTR = "jolalens_hf_source"


def hooked_transformer_available() -> bool:
    """Whether this TransformerLens still ships ``HookedTransformer`` (3.x does, 4.x does not)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def load_unprocessed(model: Any, state: dict[str, Any]) -> None:
    """Load converted weights into a ``HookedTransformer`` as they are: no folding or centring,
    so its logits and ``hook_z`` equal the Hugging Face model's."""
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )


def require_hooked_transformer() -> None:
    """A one-line :class:`ModelError` naming the fix when ``HookedTransformer`` is missing."""
    if hooked_transformer_available():
        return
    from importlib.metadata import version

    raise ModelError(
        f"model_class 'hooked-transformer' needs transformer-lens 3.x (installed: {version('transformer-lens')}, "
        "which removed HookedTransformer): run it in the TransformerLens 3.9 environment "
        "(make tl3-env, then .venv-tl3/bin/jolalens ...), or leave the model class at 'bridge'"
    )


def hf_source(model: nn.Module) -> dict[str, Any] | None:
    """Where :func:`load_hooked_model` loaded ``model`` from (``path``, ``revision``), or ``None``."""
    source = getattr(model, _SOURCE_ATTR, None)
    return dict(source) if isinstance(source, dict) else None


def load_hf_source(model: nn.Module) -> nn.Module:
    """The Hugging Face model a :func:`load_hooked_model` model was converted from, loaded again.

    Used for :func:`jolalens.export.export_hf_checkpoint` (its ``hf_model=``); the weights come
    back in the ``HookedTransformer``'s dtype, on the CPU.
    """
    source = hf_source(model)
    if source is None:
        raise ModelError(
            f"this {type(model).__name__} was not loaded by jolalens.load_model(..., "
            "model_class='hooked-transformer'), so its Hugging Face source is unknown: pass "
            "hf_model=AutoModelForCausalLM.from_pretrained(<its name or directory>) yourself"
        )
    from transformers import AutoModelForCausalLM

    dtype = next(model.parameters()).dtype
    return AutoModelForCausalLM.from_pretrained(source["path"], revision=source.get("revision"), dtype=dtype).eval()


def load_hooked_model(
    source: str | Path,
    *,
    model_name: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    hf_model: nn.Module | None = None,
    tokenizer: Any = None,
    n_ctx: int | None = None,
) -> nn.Module:
    """A ``HookedTransformer`` of the Hugging Face checkpoint ``source``, weights unprocessed.

    ``source`` is a checkpoint directory or a hub name; ``hf_model`` (already loaded) skips
    loading it. ``model_name`` is recorded as ``cfg.model_name`` (default ``source``): the name
    a bridge of the same weights carries, so saved edits move between the two classes.
    ``n_ctx`` defaults to the model's context capped at 2048.
    """
    require_hooked_transformer()
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(source)
    if hf_model is None:
        hf_model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=dtype)
    hf: Any = hf_model
    hf.eval()
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    if n_ctx is None:
        positions = getattr(hf.config, "max_position_embeddings", None) or getattr(hf.config, "n_positions", None)
        n_ctx = min(int(positions or DEFAULT_N_CTX), DEFAULT_N_CTX)
    with tempfile.TemporaryDirectory(prefix="jolalens-hooked-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3.9 warns that 4.0 removes the class
        # TransformerLens reads the config from a directory; a neutral name keeps it from guessing
        # the architecture from the name (it does for names containing "llama" or "gemma")
        config_dir = Path(tmp) / "checkpoint"
        _config_for_transformer_lens(hf.config).save_pretrained(config_dir)
        try:
            cfg = loading.get_pretrained_model_config(
                str(config_dir), hf_cfg=hf.config.to_dict(), fold_ln=False, device=device, dtype=dtype, n_ctx=n_ctx
            )
            state = loading.get_pretrained_state_dict(str(config_dir), cfg, hf, dtype=dtype)
        except (AttributeError, NotImplementedError, KeyError, ValueError) as exc:
            arch = (getattr(hf.config, "architectures", None) or [type(hf).__name__])[0]
            raise ModelError(
                f"TransformerLens {_tl_version()} cannot convert {arch} into a HookedTransformer "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); use the default bridge"
            ) from exc
        cfg.model_name = model_name or source
        model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="right")
        load_unprocessed(model, state)
    model.move_model_modules_to_device()
    model.eval()
    setattr(model, _SOURCE_ATTR, {"path": source, "revision": revision})
    logger.info("loaded %s as a HookedTransformer (%s, n_ctx=%d)", cfg.model_name, cfg.original_architecture, n_ctx)
    return model


def _config_for_transformer_lens(config: Any) -> Any:
    """A copy of ``config`` with the fields TransformerLens 3.9 still reads under transformers 5.

    Its GPT-2 conversion reads ``n_ctx``, which transformers 5 no longer keeps (``n_positions``).
    """
    config = copy.deepcopy(config)
    if getattr(config, "model_type", None) == "gpt2" and "n_ctx" not in config.to_dict():
        config.n_ctx = config.n_positions
    return config


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")
