"""LoRA (Hu et al., ICLR 2022) through ``peft``: ``W x + (alpha / r) B A dropout(x)``.

The adapters are peft's own ``lora.Linear`` layers (peft's Kaiming-uniform ``A``, zero ``B``,
its dropout and scaling), built around the Hugging Face linear maps that the bridge wraps.
On the HF view the edit swaps those peft layers in for the chosen ``nn.Linear`` modules while
attached (and swaps the originals back on ``remove()``); on a TransformerBridge's hook points
(``backend="hook_points"``) it applies the same peft sub-modules between each component's
``hook_in`` and ``hook_out`` (same logits and training, tested). A model without those Linear
layers (a ``HookedTransformer``, a GPT-2 bridge's ``Conv1D``) cannot take a LoRA edit. Adapter weights are
float32. Default targets are LLM-Adapters' q, k, v, up, down.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..edit import Backend, EditHandle, HookFn, ModuleHook, register_method
from ..errors import ModelError
from ..hf_view import decoder_layers
from ..models import ModelDims, model_dims, model_identity
from ..sites import Site, SiteKind, tl_hook
from ._common import BaselineEdit, Projection, normalise_sites, projection_shape

__all__ = ["LoraConfig", "LoraEdit"]

ADAPTER = "default"


@dataclass(frozen=True)
class LoraConfig:
    """Rank, scaling ``alpha`` (``alpha / r`` multiplies the update), dropout and targets."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[Projection, ...] = (Projection.Q, Projection.K, Projection.V, Projection.UP, Projection.DOWN)
    layers: tuple[int, ...] | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        normalise_sites(self)
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(
                f"need r >= 1, alpha > 0 and 0 <= dropout < 1; got r={self.r}, alpha={self.alpha}, "
                f"dropout={self.dropout}"
            )

    def n_parameters(self, dims: ModelDims) -> int:
        n_layers = dims.n_layers if self.layers is None else len(self.layers)
        return n_layers * sum(self.r * sum(projection_shape(dims, t)) for t in self.targets)


def _loaded(module: nn.Module) -> AbstractContextManager[Any]:
    """accelerate's ``align_module_device`` (loads an offloaded module's weights), if available."""
    try:
        from accelerate.utils import align_module_device
    except ImportError:  # an accelerate too old to have it cannot have offloaded the module either
        return nullcontext()
    return align_module_device(module)


def _key(proj: Projection, layer: int) -> str:
    return f"L{layer}_{proj.value}"


@register_method
class LoraEdit(BaselineEdit):
    """peft LoRA adapters on the chosen projections of the chosen layers.

    LoRA keeps its own attaching instead of one ``site_edits()`` function per site: its update
    needs a projection's input *and* output in the same call, and on the HF view :meth:`attach`
    swaps peft's own ``lora.Linear`` layers in for the target modules (peft's dropout, scaling
    and float32 adapters), which no hook reproduces. :meth:`hf_hooks` (one forward hook per
    ``Linear``, seeing its input and output) and :meth:`fwd_hooks` (the ``proj_in`` and
    ``proj_out`` sites of :mod:`jolalens.sites`) are the same update as hooks, tested equal.
    """

    method = "lora"
    config_cls = LoraConfig

    def __init__(self, dims: ModelDims, config: LoraConfig | None = None, view: nn.Module | None = None) -> None:
        config = config or LoraConfig()
        super().__init__(dims, config)
        if view is None:
            raise ModelError("LoraEdit wraps a model's linear maps; build it with LoraEdit.for_model(model, config)")
        from peft import LoraConfig as PeftLoraConfig
        from peft.tuners.lora import Linear as PeftLoraLinear

        self.layers = self._layers(config.layers)
        peft_config = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout)
        self._peft: dict[str, Any] = {}  # plain dict: the wrapped base weights are not the edit's
        self.lora_A, self.lora_B, self.lora_dropout = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            for layer in self.layers:
                for proj in config.targets:
                    base = proj.hf_module(view, layer)
                    # An offloaded base (device_map to cpu/disk) is on meta until its forward; load
                    # it for the build so peft creates the adapters on its execution device.
                    with _loaded(base):
                        wrapped = PeftLoraLinear(base, ADAPTER, config=peft_config, r=config.r, lora_alpha=config.alpha)
                    wrapped.lora_A[ADAPTER].float()
                    wrapped.lora_B[ADAPTER].float()
                    key = _key(proj, layer)
                    self._peft[key] = wrapped
                    self.lora_A[key] = wrapped.lora_A[ADAPTER]
                    self.lora_B[key] = wrapped.lora_B[ADAPTER]
                    self.lora_dropout[key] = wrapped.lora_dropout[ADAPTER]

    @classmethod
    def for_model(cls, model: nn.Module, config: LoraConfig | None = None) -> LoraEdit:
        from ..hf_view import hf_view

        if not isinstance(getattr(model, "original_model", None), nn.Module):
            raise ModelError(
                f"LoRA wraps a Hugging Face model's Linear layers, and {type(model).__name__} has none "
                "(a HookedTransformer); use a TransformerBridge of the model (either backend)"
            )
        edit = cls(model_dims(model), config or LoraConfig(), view=hf_view(model))
        edit.model_identity = model_identity(model)
        return edit.eval()

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.r

    def delta(self, x: Tensor, key: str) -> Tensor:
        """peft's LoRA update ``scaling * B(A(dropout(x)))`` for one adapted projection."""
        a, b = self.lora_A[key], self.lora_B[key]
        x = x.to(device=a.weight.device, dtype=a.weight.dtype)
        return b(a(self.lora_dropout[key](x))) * self.scaling

    # ---- attaching -------------------------------------------------------------------
    def attach(self, model: nn.Module, backend: Backend | str | None = None) -> EditHandle:
        """HF view: swap peft's LoRA layers in for the target ``Linear`` modules until ``remove()``."""
        from ..runners import resolve_backend

        backend = resolve_backend(model, backend)
        if backend is Backend.HOOK_POINTS:
            return super().attach(model, backend)
        from ..hf_view import hf_view

        self._check_model(model)
        view = hf_view(model)
        handle = EditHandle(backend)
        try:
            for layer in self.layers:
                for proj in self.config.targets:
                    parent = getattr(decoder_layers(view)[layer], proj.hf_parent)
                    base = getattr(parent, proj.value)
                    wrapped = self._peft[_key(proj, layer)]
                    if base is not wrapped.base_layer:
                        raise ModelError(
                            f"layer {layer} {proj.value} is not the module this LoRA edit was built on; "
                            "build the edit for this model with LoraEdit.for_model(model)"
                        )
                    setattr(parent, proj.value, wrapped)
                    handle._removers.append(
                        lambda parent=parent, name=proj.value, base=base: setattr(parent, name, base)
                    )
        except Exception:
            handle.remove()
            raise
        return handle

    def hf_hooks(self, view: nn.Module) -> list[ModuleHook]:
        """The same update as output hooks on the view's ``Linear`` modules (``attach`` swaps in
        peft's layers instead; both are tested equal)."""

        def make(key: str):
            def add_lora(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
                # added in float32 and rounded once, as peft does
                return (out + self.delta(args[0], key).to(out.device)).to(out.dtype)

            return add_lora

        return [
            ModuleHook(proj.hf_module(view, layer), make(_key(proj, layer)), pre=False)
            for layer in self.layers
            for proj in self.config.targets
        ]

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        """On a TransformerBridge: read the projection's input at its ``proj_in`` site and add the
        update at its ``proj_out`` site (two hook points, so the input is kept in between)."""
        hooks: list[tuple[str, HookFn]] = []
        for layer in self.layers:
            for proj in self.config.targets:
                key = _key(proj, layer)
                inputs: dict[str, Tensor] = {}

                def read(x: Tensor, inputs: dict[str, Tensor] = inputs) -> None:
                    inputs["x"] = x

                def write(out: Tensor, inputs: dict[str, Tensor] = inputs, key: str = key) -> Tensor:
                    x = inputs.pop("x")
                    return (out + self.delta(x, key).to(out.device)).to(out.dtype)

                hooks += [
                    tl_hook(Site(SiteKind.PROJ_IN, layer, proj), read),
                    tl_hook(Site(SiteKind.PROJ_OUT, layer, proj), write),
                ]
        return hooks

    def _saved(self) -> dict[str, Tensor]:
        out = {}
        for layer in self.layers:
            for proj in self.config.targets:
                key = _key(proj, layer)
                site = f"blocks.{layer}.{proj.tl_component}"
                out[f"{site}.lora_A"] = self.lora_A[key].weight
                out[f"{site}.lora_B"] = self.lora_B[key].weight
        return out

    def extra_repr(self) -> str:
        names = ",".join(t.value.removesuffix("_proj") for t in self.config.targets)
        return (
            f"r={self.config.r}, alpha={self.config.alpha:g}, targets={names}, "
            f"layers={len(self.layers)}/{self.dims.n_layers}, params={self.n_trainable():,}"
        )
