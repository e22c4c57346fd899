"""BitFit (Ben Zaken et al., ACL 2022): train only bias terms.

Llama-style models have no biases, so BitFit adds a zero-initialised bias to the output of
every chosen linear map (by default all seven per layer: q, k, v, o, gate, up, down). The
model starts unchanged. On a TransformerBridge the bias is added at the wrapping component's
``hook_out`` (``blocks.{l}.attn.q.hook_out`` ...); on the HF view, to the ``Linear``'s output:
the ``proj_out`` site of :mod:`jolalens.sites`, which also flattens per-head hook points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..edit import register_method
from ..models import ModelDims
from ..sites import Site, SiteFn, SiteKind
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
        return (out + bias).to(out.dtype)  # added in float32, rounded once

    def site_edits(self) -> list[tuple[Site, SiteFn]]:
        """A bias added at the output of each target projection of each edited layer."""

        def at(proj: Projection, i: int) -> SiteFn:
            return lambda out: self._add(out, proj, i)

        return [
            (Site(SiteKind.PROJ_OUT, layer, t), at(t, i))
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
