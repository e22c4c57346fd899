"""BitFit (Ben Zaken et al., ACL 2022): train only bias terms.

Llama-style models have no biases, so BitFit adds a zero-initialised bias to the output of
every chosen linear map (by default all seven per layer: q, k, v, o, gate, up, down). The
model starts unchanged. On a TransformerBridge the bias is added at the wrapping component's
``hook_out`` (``blocks.{l}.attn.q.hook_out`` ...); on the HF view, to the ``Linear``'s output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..edit import HookFn, ModuleHook, register_method
from ..models import ModelDims
from ._common import BaselineEdit, Projection, normalise_sites, projection_shape

__all__ = ["BitFitConfig", "BitFitEdit"]

ALL_PROJECTIONS = tuple(Projection)


@dataclass(frozen=True)
class BitFitConfig:
    """Which linear maps get a trainable bias, in which layers (all by default)."""

    targets: tuple[Projection, ...] = ALL_PROJECTIONS
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        normalise_sites(self)

    def n_parameters(self, dims: ModelDims) -> int:
        n_layers = dims.n_layers if self.layers is None else len(self.layers)
        return n_layers * sum(projection_shape(dims, t)[1] for t in self.targets)


@register_method
class BitFitEdit(BaselineEdit):
    """Zero-initialised biases ``[layer, d_out]`` per target projection."""

    method = "bitfit"
    config_cls = BitFitConfig

    def __init__(self, dims: ModelDims, config: BitFitConfig | None = None) -> None:
        config = config or BitFitConfig()
        super().__init__(dims, config)
        self.layers = self._layers(config.layers)
        self.biases = nn.ParameterDict(
            {t.value: nn.Parameter(torch.zeros(len(self.layers), projection_shape(dims, t)[1])) for t in config.targets}
        )

    def _add(self, out: Tensor, proj: Projection, i: int) -> Tensor:
        bias = self.biases[proj.value][i].float().to(out.device)
        bias = bias.view(out.shape[2:]) if out.dim() == 4 else bias
        return (out + bias).to(out.dtype)  # added in float32, rounded once

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        def make(proj: Projection, i: int) -> HookFn:
            def add_bias(out: Tensor, hook: Any = None) -> Tensor:
                return self._add(out, proj, i)

            return add_bias

        return [
            (t.hook_name(layer, "out"), make(t, i)) for t in self.config.targets for i, layer in enumerate(self.layers)
        ]

    def hf_hooks(self, view: nn.Module) -> list[ModuleHook]:
        def make(proj: Projection, i: int):
            def add_bias(module: nn.Module, args: Any, out: Tensor) -> Tensor:
                return self._add(out, proj, i)

            return add_bias

        return [
            ModuleHook(t.hf_module(view, layer), make(t, i), pre=False)
            for t in self.config.targets
            for i, layer in enumerate(self.layers)
        ]

    def _saved(self) -> dict[str, Tensor]:
        return {
            f"blocks.{layer}.{t.tl_component}.bias": self.biases[t.value][i]
            for t in self.config.targets
            for i, layer in enumerate(self.layers)
        }

    def extra_repr(self) -> str:
        names = ",".join(t.value.removesuffix("_proj") for t in self.config.targets)
        return f"layers={len(self.layers)}/{self.dims.n_layers}, targets={names}, params={self.n_trainable():,}"
