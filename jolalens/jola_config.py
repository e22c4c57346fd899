"""What a JoLA edit learns: its edit types, gate modes and :class:`JolaConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from .errors import EditLoadError
from .gates import HardConcrete

__all__ = ["EditType", "GateMode", "JolaConfig"]


class EditType(StrEnum):
    """Which halves of the hybrid edit are learned (the paper's component ablation)."""

    BOTH = "both"
    ADDITIVE = "additive"
    MULTIPLICATIVE = "multiplicative"


class GateMode(StrEnum):
    """Separate gates per type (JoLA), one shared gate per head, or no gates (always on)."""

    SEPARATE = "separate"
    SHARED = "shared"
    NONE = "none"


@dataclass(frozen=True)
class JolaConfig:
    """What a JoLA edit learns.

    Attributes:
        layers: edited layers; ``None`` for all (the paper).
        edit_type: additive, multiplicative, or both (the paper).
        gate_mode: separate gates per type (the paper), one shared gate per head, or none.
        init_std: std of the N(0, std^2) init of ``a`` and ``m`` (1e-3 in the released code).
        gate: Hard-Concrete constants (temperature 0.33, stretch -0.1..1.1).
        per_example_noise: draw gate noise per example instead of once per forward pass.
        seed: seeds the parameter init and the gate noise (a generator of the edit's own).
    """

    layers: tuple[int, ...] | None = None
    edit_type: EditType = EditType.BOTH
    gate_mode: GateMode = GateMode.SEPARATE
    init_std: float = 1e-3
    gate: HardConcrete = field(default_factory=HardConcrete)
    per_example_noise: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        object.__setattr__(self, "edit_type", EditType(self.edit_type))
        object.__setattr__(self, "gate_mode", GateMode(self.gate_mode))
        if isinstance(self.gate, dict):
            object.__setattr__(self, "gate", HardConcrete(**self.gate))
        if self.layers is not None:
            layers = tuple(int(x) for x in self.layers)
            if not layers or len(set(layers)) != len(layers) or any(x < 0 for x in layers):
                raise ValueError(f"layers must be distinct non-negative ints, got {self.layers}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["edit_type"] = self.edit_type.value
        out["gate_mode"] = self.gate_mode.value
        out["layers"] = list(self.layers) if self.layers is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JolaConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EditLoadError(f"unknown JoLA config keys {unknown}: saved by a newer jolalens?")
        return cls(**data)
