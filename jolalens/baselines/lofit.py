"""LoFiT (Yin, Ye & Durrett, NeurIPS 2024): localise heads, then fine-tune bias vectors on them.

Stage 1 (``heads=None``): ``z <- (1 + A_{l,h}) * z`` on every head, trained with an L1 penalty
``l1 * sum |A|``; heads are ranked by ``|A_{l,h}|_2`` and the top ``k`` kept. Stage 2 (``heads``
given): a fresh ``z <- z + v_{l,h}`` on those heads only, trained on the task loss alone. Both
init N(0, 1e-3^2) and edit every position of ``hook_z``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..data import Example
from ..edit import register_method
from ..models import ModelDims, hook_z_name
from ..sites import Site, SiteFn, SiteKind
from ._common import BaselineEdit

__all__ = ["LofitConfig", "LofitEdit", "LofitResult", "train_lofit"]


@dataclass(frozen=True)
class LofitConfig:
    """Stage 1 when ``heads`` is None (scales on all heads), else stage 2 (biases on ``heads``)."""

    heads: tuple[tuple[int, int], ...] | None = None
    l1: float = 5e-4
    init_std: float = 1e-3
    seed: int = 42

    def __post_init__(self) -> None:
        if self.heads is not None:
            heads = tuple((int(a), int(b)) for a, b in self.heads)
            if not heads or len(set(heads)) != len(heads):
                raise ValueError(f"heads must be distinct (layer, head) pairs, got {self.heads}")
            object.__setattr__(self, "heads", tuple(sorted(heads)))
        if self.l1 < 0 or self.init_std <= 0:
            raise ValueError("LoFiT needs l1 >= 0 and init_std > 0")

    @property
    def stage(self) -> int:
        return 1 if self.heads is None else 2

    def n_parameters(self, dims: ModelDims) -> int:
        n = dims.n_layers * dims.n_heads if self.heads is None else len(self.heads)
        return n * dims.d_head


@register_method
class LofitEdit(BaselineEdit):
    """Stage 1: ``scale [layer, head_index, d_head]``; stage 2: ``bias [k, d_head]`` on ``heads``."""

    method = "lofit"
    config_cls = LofitConfig

    def __init__(self, dims: ModelDims, config: LofitConfig | None = None) -> None:
        config = config or LofitConfig()
        super().__init__(dims, config)
        gen = torch.Generator().manual_seed(config.seed)
        if config.heads is None:
            self.scale = nn.Parameter(
                torch.randn(dims.n_layers, dims.n_heads, dims.d_head, generator=gen) * config.init_std
            )
        else:
            bad = [(a, b) for a, b in config.heads if not (0 <= a < dims.n_layers and 0 <= b < dims.n_heads)]
            if bad:
                raise ValueError(f"heads {bad[:3]} do not exist in a {dims.n_layers}x{dims.n_heads} model")
            self.bias = nn.Parameter(torch.randn(len(config.heads), dims.d_head, generator=gen) * config.init_std)
            index = torch.tensor(config.heads, dtype=torch.long)
            self.register_buffer("head_index", index, persistent=False)

    @property
    def stage(self) -> int:
        return self.config.stage

    def _layers_edited(self) -> list[int]:
        if self.config.heads is None:
            return list(range(self.dims.n_layers))
        return sorted({a for a, _ in self.config.heads})

    def _dense_bias(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        dense = self.bias.new_zeros(self.dims.n_layers, self.dims.n_heads, self.dims.d_head)
        return dense.index_put((self.head_index[:, 0], self.head_index[:, 1]), self.bias)

    def apply(self, z: Float[Tensor, "batch pos head_index d_head"], layer: int) -> Tensor:
        """``(1 + A) * z`` as ``z + A * z``, or ``z + v``: edit term in float32, rounded once."""
        if self.config.heads is None:
            delta = self.scale[layer].float().to(z.device) * z
        else:
            delta = self._dense_bias()[layer].float().to(z.device)
        return (z + delta).to(z.dtype)

    def penalty(self, step: int) -> tuple[Tensor, float]:
        """Stage 1's ``l1 * sum |A|``; nothing in stage 2."""
        if self.config.heads is None:
            return self.config.l1 * self.scale.abs().sum(), self.config.l1
        return super().penalty(step)

    def head_scores(self) -> Float[Tensor, "n_layers n_heads"]:
        """Stage 1's ranking score ``|A_{l,h}|_2`` (stage 2: ``|v_{l,h}|_2`` on its heads)."""
        if self.config.heads is None:
            return self.scale.detach().float().cpu().norm(dim=-1)
        return self._dense_bias().detach().float().cpu().norm(dim=-1)

    def top_heads(self, k: int) -> tuple[tuple[int, int], ...]:
        scores = self.head_scores().flatten()
        top = torch.topk(scores, min(k, scores.numel())).indices.tolist()
        return tuple(divmod(i, self.dims.n_heads) for i in top)

    def site_edits(self) -> list[tuple[Site, SiteFn]]:
        """:meth:`apply` at ``hook_z`` of every layer with an edited head."""

        def at(layer: int) -> SiteFn:
            return lambda z: self.apply(z, layer)

        return [(Site(SiteKind.HOOK_Z, layer), at(layer)) for layer in self._layers_edited()]

    def _saved(self) -> dict[str, Tensor]:
        if self.config.heads is None:
            return {f"{hook_z_name(layer)}.scale": self.scale[layer] for layer in range(self.dims.n_layers)}
        return {f"{hook_z_name(a)}.head_{b}.bias": self.bias[i] for i, (a, b) in enumerate(self.config.heads)}

    def extra_repr(self) -> str:
        where = "all heads" if self.config.heads is None else f"{len(self.config.heads)} heads"
        return f"stage={self.stage}, {where}, params={self.n_trainable():,}"


@dataclass
class LofitResult:
    """Both stages' training results; ``stage2.edit`` is the LoFiT edit."""

    stage1: Any
    stage2: Any
    heads: tuple[tuple[int, int], ...]
    stage1_scores: Tensor = field(repr=False)


def train_lofit(
    model: nn.Module,
    train: Sequence[Example],
    valid: Sequence[Example],
    *,
    k: int,
    stage1_lr: float = 5e-3,
    stage2_lr: float = 1e-2,
    l1: float = 5e-4,
    config: Any = None,
) -> LofitResult:
    """LoFiT's two stages with the shared trainer (``config``: a :class:`~jolalens.TrainConfig`)."""
    from dataclasses import replace

    from ..train import TrainConfig, train_edit

    cfg = config or TrainConfig()
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    stage1 = LofitEdit.for_model(model, LofitConfig(l1=l1, seed=cfg.seed))
    first = train_edit(model, stage1, train, valid, config=replace(cfg, lr=stage1_lr), desc="LoFiT stage 1")
    heads = first.edit.top_heads(k)
    stage2 = LofitEdit.for_model(model, LofitConfig(heads=heads, seed=cfg.seed))
    second = train_edit(model, stage2, train, valid, config=replace(cfg, lr=stage2_lr), desc="LoFiT stage 2")
    return LofitResult(stage1=first, stage2=second, heads=tuple(sorted(heads)), stage1_scores=first.edit.head_scores())
