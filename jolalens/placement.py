"""Where and in which dtype a model loads: dtype names and defaults, devices, device maps.

``load_model`` (in :mod:`jolalens.model_loading`) uses these; they are separate so the rules read in
one place: bf16 on a CUDA GPU that supports it, float32 elsewhere; ``device`` or ``device_map``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError

__all__ = ["DTYPES", "default_device", "from_pretrained", "resolve_dtype"]


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """``dtype`` as a ``torch.dtype``; ``None``/``"auto"``: bf16 on a bf16-capable GPU, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPES)} or 'auto'") from None


def default_device(device: str | torch.device | None, device_map: Any) -> str | torch.device | None:
    """The device to load on: ``device``, else cuda if available, else cpu; ``None`` with a map."""
    if device_map is not None:
        if device is not None:
            raise ModelError("give either device or device_map, not both (device_map places every module itself)")
        return None
    return device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")


def from_pretrained(
    source: str | Path,
    *,
    dtype: torch.dtype,
    device: str | torch.device | None,
    device_map: Any,
    revision: str | None,
    max_memory: dict[Any, Any] | None,
    offload_folder: str | Path | None,
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with jolalens' placement options."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if revision is not None:
        kwargs["revision"] = revision
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    hf: Any = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    if device_map is None and device is not None:
        hf.to(device)
    return hf.eval()
