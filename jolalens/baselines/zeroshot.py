"""Zero-shot: the frozen model with the same prompt and no edit, as an edit object so that
comparisons, save/load and the results table treat it like every other method."""

from __future__ import annotations

from dataclasses import dataclass

from ..edit import register_method
from ..models import ModelDims
from ..sites import Site, SiteFn
from ._common import BaselineEdit

__all__ = ["ZeroShotConfig", "ZeroShotEdit"]


@dataclass(frozen=True)
class ZeroShotConfig:
    """Nothing to configure."""

    def n_parameters(self, dims: ModelDims) -> int:
        return 0


@register_method
class ZeroShotEdit(BaselineEdit):
    """No parameters and no hooks."""

    method = "zeroshot"
    config_cls = ZeroShotConfig

    def __init__(self, dims: ModelDims, config: ZeroShotConfig | None = None) -> None:
        super().__init__(dims, config or ZeroShotConfig())

    def site_edits(self) -> list[tuple[Site, SiteFn]]:
        return []

    def _saved(self) -> dict:
        return {}

    def extra_repr(self) -> str:
        return "no edit"
