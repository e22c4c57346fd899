"""RED (Wu et al., ACL 2024): a per-layer scale and bias on every MLP output.

``m' = (1 + delta_l) * m + b_l`` at ``blocks.{l}.hook_mlp_out`` (the output of the Hugging Face
``mlp`` module), all positions. The scale is stored as ``delta`` in float32, starting at 0, so
small updates are not rounded away (the released code keeps the scale itself in bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..edit import register_method
from ..models import ModelDims
from ..sites import Site, SiteFn, SiteKind
from ._common import BaselineEdit

__all__ = ["RedConfig", "RedEdit"]


@dataclass(frozen=True)
class RedConfig:
    """Which layers RED edits (all by default) and which halves it learns."""

    layers: tuple[int, ...] | None = None
    scaling: bool = True
    bias: bool = True

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if not (self.scaling or self.bias):
            raise ValueError("RED needs scaling, bias, or both")

    def n_parameters(self, dims: ModelDims) -> int:
        n_layers = dims.n_layers if self.layers is None else len(self.layers)
        return n_layers * dims.d_model * (int(self.scaling) + int(self.bias))


@register_method
class RedEdit(BaselineEdit):
    """Scale-and-bias of ``hook_mlp_out``, stacked over layers: ``[layer, d_model]``."""

    method = "red"
    config_cls = RedConfig

    def __init__(self, dims: ModelDims, config: RedConfig | None = None) -> None:
        config = config or RedConfig()
        super().__init__(dims, config)
        self.layers = self._layers(config.layers)
        shape = (len(self.layers), dims.d_model)
        if config.scaling:
            self.scale_delta = nn.Parameter(torch.zeros(shape))
        if config.bias:
            self.bias = nn.Parameter(torch.zeros(shape))

    def apply(self, m: Float[Tensor, "batch pos d_model"], i: int) -> Float[Tensor, "batch pos d_model"]:
        """``(1 + delta) * m + b`` as ``m + (delta * m + b)``, in float32, rounded once."""
        edit: Tensor | None = None
        if self.config.scaling:
            edit = self.scale_delta[i].float().to(m.device) * m
        if self.config.bias:
            bias = self.bias[i].float().to(m.device)
            edit = bias if edit is None else edit + bias
        return m if edit is None else (m + edit).to(m.dtype)

    def site_edits(self) -> list[tuple[Site, SiteFn]]:
        """:meth:`apply` at ``hook_mlp_out`` of every edited layer (the output of the HF ``mlp``)."""

        def at(i: int) -> SiteFn:
            return lambda m: self.apply(m, i)

        return [(Site(SiteKind.MLP_OUT, layer), at(i)) for i, layer in enumerate(self.layers)]

    def _saved(self) -> dict[str, Tensor]:
        names = [n for n, on in (("scale_delta", self.config.scaling), ("bias", self.config.bias)) if on]
        return {
            f"blocks.{layer}.hook_mlp_out.{n}": getattr(self, n)[i]
            for n in names
            for i, layer in enumerate(self.layers)
        }

    def extra_repr(self) -> str:
        parts = [p for p, on in (("scale", self.config.scaling), ("bias", self.config.bias)) if on]
        return f"layers={len(self.layers)}/{self.dims.n_layers}, {'+'.join(parts)}, params={self.n_trainable():,}"
