"""Hard-Concrete gates (Louizos et al., 2018) as JoLA uses them.

A gate is a scalar in [0, 1] per head and edit type, parameterised by ``log_alpha``. In
training it is a noisy sample that is exactly 0 or 1 with positive probability; at
evaluation it is deterministic. The expected-L0 term ``P(g != 0)`` is what the sparsity
penalty sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["HardConcrete"]


@dataclass(frozen=True)
class HardConcrete:
    """Constants of the gate: temperature beta, stretch interval (gamma, zeta), and eps."""

    temperature: float = 0.33
    stretch_low: float = -0.1
    stretch_high: float = 1.1
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.stretch_low < 0 < 1 < self.stretch_high:
            raise ValueError(
                f"stretch interval must contain [0, 1] strictly: got ({self.stretch_low}, {self.stretch_high})"
            )
        if not 0 < self.eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {self.eps}")

    @property
    def l0_shift(self) -> float:
        """-beta * ln(-gamma / zeta): 0.7913 for the defaults."""
        return -self.temperature * math.log(-self.stretch_low / self.stretch_high)

    @property
    def closed_threshold(self) -> float:
        """The eval gate is exactly 0 iff log_alpha <= this (-ln 11 for the defaults)."""
        s = -self.stretch_low / (self.stretch_high - self.stretch_low)
        return math.log(s / (1 - s))

    def _stretch(self, s: Tensor) -> Tensor:
        return (s * (self.stretch_high - self.stretch_low) + self.stretch_low).clamp(0.0, 1.0)

    def sample(
        self,
        log_alpha: Float[Tensor, "*gates"],
        *,
        generator: torch.Generator | None = None,
        batch_shape: tuple[int, ...] = (),
    ) -> Float[Tensor, "*batch *gates"]:
        """A training-mode gate: ``clip((sigmoid((log u - log(1-u) + log_alpha)/beta)) * (zeta-gamma) + gamma, 0, 1)``.

        ``batch_shape`` draws independent noise per example (variance reduction); by default one
        sample per gate is shared by the whole batch, as in the paper.
        """
        u = self.uniform_noise(log_alpha, generator=generator, batch_shape=batch_shape)
        return self.sample_with(log_alpha, u)

    def uniform_noise(
        self,
        log_alpha: Float[Tensor, "*gates"],
        *,
        generator: torch.Generator | None = None,
        batch_shape: tuple[int, ...] = (),
    ) -> Float[Tensor, "*batch *gates"]:
        """The random part of :meth:`sample`: ``u ~ U(eps, 1 - eps)``, float32, no gradient."""
        shape = (*batch_shape, *log_alpha.shape)
        return torch.rand(shape, generator=generator, device=log_alpha.device, dtype=torch.float32)

    def sample_with(
        self, log_alpha: Float[Tensor, "*gates"], u: Float[Tensor, "*batch *gates"]
    ) -> Float[Tensor, "*batch *gates"]:
        """The differentiable part of :meth:`sample` for given uniform noise ``u``."""
        u = u.to(log_alpha.dtype) * (1 - 2 * self.eps) + self.eps
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.temperature)
        return self._stretch(s)

    def deterministic(self, log_alpha: Float[Tensor, "*gates"]) -> Float[Tensor, "*gates"]:
        """The evaluation gate ``clip(sigmoid(log_alpha) * (zeta-gamma) + gamma, 0, 1)`` (no temperature)."""
        return self._stretch(torch.sigmoid(log_alpha))

    def prob_open(self, log_alpha: Float[Tensor, "*gates"]) -> Float[Tensor, "*gates"]:
        """Expected L0: ``P(g != 0) = sigmoid(log_alpha + l0_shift)``, clamped to [eps, 1-eps]."""
        return torch.sigmoid(log_alpha + self.l0_shift).clamp(self.eps, 1 - self.eps)
