"""LoRA (Hu et al., ICLR 2022): ``W x + (alpha / r) B A dropout(x)`` on chosen projections.

The adapters are peft's own ``lora.Linear`` layers (peft's Kaiming-uniform ``A``, zero ``B``,
its dropout and scaling). Two ways to apply them, the same update:

* A ``TransformerBridge`` around Llama-style decoder layers (``q_proj`` ... ``down_proj``
  ``Linear`` modules): peft's layers are built around those modules. On the HF view the edit swaps
  them in while attached (and the originals back on ``remove()``); on the bridge's hook points
  (``backend="hook_points"``) the same sub-modules run between each component's ``hook_in`` and
  ``hook_out`` (same logits and training, tested).
* Any other TransformerLens model (a classic ``HookedTransformer``, a GPT-2 bridge with fused
  ``Conv1D`` projections): the adapters are built from the model's shapes (peft around a
  stand-in ``Linear``, so the same seed gives the same ``A``) and act through hook points only:
  the projection's input is read at its ``proj_in`` site and ``(x A^T) B^T * alpha / r`` is
  added at its ``proj_out`` site (on a ``HookedTransformer``: ``ln1.hook_normalized`` and
  ``attn.hook_q`` ..., see :func:`jolalens.sites.hooked_projection_hook`).

The saved file is the same either way (``blocks.{l}.attn.q.lora_A`` ``[r, d_in]``, ``lora_B``
``[d_out, r]``), so an edit moves between a bridge and a ``HookedTransformer`` of the same
weights. Adapter weights are float32. Default targets are LLM-Adapters' q, k, v, up, down.
"""

from __future__ import annotations

import weakref
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


def _linear_view(model: nn.Module) -> nn.Module | None:
    """The HF view whose Llama-style ``Linear`` modules peft wraps, or ``None`` (hook points only)."""
    if not isinstance(getattr(model, "original_model", None), nn.Module):
        return None  # a HookedTransformer
    from ..hf_view import hf_view

    view = hf_view(model)
    try:
        decoder_layers(view)
    except ModelError:
        return None  # e.g. GPT-2: fused Conv1D projections under transformer.h
    return view


def _stand_in(dims: ModelDims, proj: Projection) -> nn.Linear:
    """An uninitialised ``Linear`` of the projection's shape for peft to wrap (draws no random numbers)."""
    d_in, d_out = projection_shape(dims, proj)
    linear = nn.Linear(d_in, d_out, bias=False, device="meta")
    linear.weight = nn.Parameter(torch.empty(d_out, d_in), requires_grad=False)
    return linear


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
    Built for a model without Llama-style ``Linear`` modules (``view=None``), the edit holds the
    same adapters without peft's wrapped layers and attaches through hooks only.
    """

    method = "lora"
    config_cls = LoraConfig

    def __init__(self, dims: ModelDims, config: LoraConfig | None = None, view: nn.Module | None = None) -> None:
        config = config or LoraConfig()
        super().__init__(dims, config)
        from peft import LoraConfig as PeftLoraConfig
        from peft.tuners.lora import Linear as PeftLoraLinear

        self.layers = self._layers(config.layers)
        self._built_for: weakref.ref[nn.Module] | None = None  # the hook-point model, when built for one
        peft_config = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout)
        self._peft: dict[str, Any] = {}  # plain dict: the wrapped base weights are not the edit's
        self.lora_A, self.lora_B, self.lora_dropout = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            for layer in self.layers:
                for proj in config.targets:
                    base = proj.hf_module(view, layer) if view is not None else _stand_in(dims, proj)
                    # An offloaded base (device_map to cpu/disk) is on meta until its forward; load
                    # it for the build so peft creates the adapters on its execution device.
                    with _loaded(base):
                        wrapped = PeftLoraLinear(base, ADAPTER, config=peft_config, r=config.r, lora_alpha=config.alpha)
                    wrapped.lora_A[ADAPTER].float()
                    wrapped.lora_B[ADAPTER].float()
                    key = _key(proj, layer)
                    if view is not None:
                        self._peft[key] = wrapped
                    self.lora_A[key] = wrapped.lora_A[ADAPTER]
                    self.lora_B[key] = wrapped.lora_B[ADAPTER]
                    self.lora_dropout[key] = wrapped.lora_dropout[ADAPTER]

    @classmethod
    def for_model(cls, model: nn.Module, config: LoraConfig | None = None) -> LoraEdit:
        """peft around the bridge's ``Linear`` modules where it has Llama-style decoder layers;
        for any other TransformerLens model, adapters that act through its hook points."""
        config = config or LoraConfig()
        view = _linear_view(model)
        edit = cls(model_dims(model), config, view=view)
        edit.model_identity = model_identity(model)
        if view is None:
            edit._built_for = weakref.ref(model)
            edit._check_hook_points(model)
            device = next((p.device for p in model.parameters() if not p.is_meta), None)
            if device is not None:
                edit.to(device)
        return edit.eval()

    def _check_hook_points(self, model: nn.Module) -> None:
        """Every target's input and output hook point exists on ``model`` (else a ModelError)."""
        hooks: Any = getattr(model, "hook_dict", {})
        for proj in self.config.targets:
            for kind in (SiteKind.PROJ_IN, SiteKind.PROJ_OUT):
                name = Site(kind, self.layers[0], proj).hook_name_on(model)
                if name not in hooks:
                    raise ModelError(
                        f"LoRA on {proj.value} needs the hook point {name!r}, which {type(model).__name__} "
                        "lacks; leave that projection out of LoraConfig(targets=...)"
                    )

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
        if backend is Backend.HOOK_POINTS or not self._peft:  # built without peft's layers: hooks
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
        """Read the projection's input at its ``proj_in`` site and add the update at its
        ``proj_out`` site (two hook points, so the input is kept in between). Hook names are those
        of the model the edit was built for (a ``HookedTransformer``'s differ from a bridge's)."""
        built_for = self._built_for() if self._built_for is not None else None
        return self.fwd_hooks_for(built_for)

    def fwd_hooks_for(self, model: nn.Module | None) -> list[tuple[str, HookFn]]:
        """:meth:`fwd_hooks` with the hook point names of ``model`` (``None``: a bridge's)."""
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
                    tl_hook(Site(SiteKind.PROJ_IN, layer, proj), read, model),
                    tl_hook(Site(SiteKind.PROJ_OUT, layer, proj), write, model),
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
