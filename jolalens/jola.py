"""The JoLA edit: gated additive and multiplicative edits of every head's ``hook_z``.

For layer ``l`` and head ``h``: ``z' = (1 + g_m * m) * z + g_a * a`` (computed in float32,
rounded once to the model's dtype), with ``m, a`` vectors of
size ``d_head`` and ``g_m, g_a`` Hard-Concrete gates. Parameters are stacked over the edited
layers (``[layer, head_index, d_head]``), so the edit of a layer is one broadcast over heads.
What it learns is a :class:`JolaConfig` (:mod:`jolalens.jola_config`), re-exported here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn

from .edit import Edit, register_method
from .errors import EditLoadError
from .jola_config import EditType, GateMode, JolaConfig
from .jola_training import (
    DEFAULT_GATE_LR_SCALE,
    SparsityConfig,
    gate_param_groups,
    gate_report,
    sparsity_penalty,
)
from .models import ModelDims, hook_z_name, model_dims, model_identity
from .sites import Site, SiteFn, SiteKind

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["EditType", "GateMode", "JolaConfig", "JolaEdit", "selected_heads"]


@register_method
class JolaEdit(Edit):
    """Gated per-head edits on ``hook_z`` (or, equivalently, on the input of ``o_proj``).

    ``sparsity`` is the gate penalty the trainer adds (a training setting, not saved with the
    edit): any trainer that calls :meth:`penalty` and :meth:`param_groups` trains JoLA.
    """

    method = "jola"

    def __init__(
        self,
        dims: ModelDims,
        config: JolaConfig | None = None,
        sparsity: SparsityConfig | None = None,
    ) -> None:
        super().__init__()
        config = config or JolaConfig()
        self.sparsity = sparsity or SparsityConfig()
        layers = config.layers if config.layers is not None else tuple(range(dims.n_layers))
        if max(layers) >= dims.n_layers:
            raise ValueError(f"layer {max(layers)} out of range: the model has {dims.n_layers} layers")
        self.config = config
        self.dims = dims
        self.layers: tuple[int, ...] = tuple(layers)
        self.model_identity: dict[str, Any] | None = None
        n, h, d = len(self.layers), dims.n_heads, dims.d_head
        gen = torch.Generator().manual_seed(config.seed)
        self.noise_generators: dict[torch.device, torch.Generator] = {}
        self._held_noise: dict[tuple[Any, ...], Tensor] | None = None
        std = config.init_std
        if config.edit_type in (EditType.BOTH, EditType.ADDITIVE):
            self.additive = nn.Parameter(torch.randn(n, h, d, generator=gen) * std)
        if config.edit_type in (EditType.BOTH, EditType.MULTIPLICATIVE):
            self.multiplicative = nn.Parameter(torch.randn(n, h, d, generator=gen) * std)
        # Xavier-uniform on an [n_heads, 1] tensor, as the released code initialises log alpha.
        bound = math.sqrt(6.0 / (h + 1))
        for name in self.gate_names:
            setattr(self, f"log_alpha_{name}", nn.Parameter((torch.rand(n, h, generator=gen) * 2 - 1) * bound))

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        config: JolaConfig | None = None,
        sparsity: SparsityConfig | None = None,
    ) -> JolaEdit:
        """A freshly initialised edit shaped for ``model``'s attention heads, in eval mode."""
        edit = cls(model_dims(model), config, sparsity)
        edit.model_identity = model_identity(model)
        return edit.eval()  # deterministic gates unless a trainer switches to training mode

    # ---- structure ----------------------------------------------------------------------
    @property
    def has_additive(self) -> bool:
        return self.config.edit_type in (EditType.BOTH, EditType.ADDITIVE)

    @property
    def has_multiplicative(self) -> bool:
        return self.config.edit_type in (EditType.BOTH, EditType.MULTIPLICATIVE)

    @property
    def gate_names(self) -> tuple[str, ...]:
        """The gate parameters this edit has: ``additive``/``multiplicative``, ``shared``, or none."""
        mode = self.config.gate_mode
        if mode is GateMode.NONE:
            return ()
        if mode is GateMode.SHARED:
            return ("shared",)
        kinds = []
        if self.has_additive:
            kinds.append("additive")
        if self.has_multiplicative:
            kinds.append("multiplicative")
        return tuple(kinds)

    def _log_alpha(self, kind: str) -> Tensor | None:
        mode = self.config.gate_mode
        if mode is GateMode.NONE:
            return None
        return getattr(self, "log_alpha_shared" if mode is GateMode.SHARED else f"log_alpha_{kind}")

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        gen = self.noise_generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(self.config.seed + 1)
            self.noise_generators[device] = gen
        return gen

    @contextmanager
    def noise_held(self) -> Iterator[None]:
        """Each gate's noise drawn inside the block is reused by later samples of the same layer.

        The trainer holds the noise for one optimiser step: a layer recomputed under activation
        checkpointing then sees the gates its forward saw, and the generator advances exactly as
        without checkpointing (so both give the same training run).
        """
        outer = self._held_noise
        self._held_noise = {} if outer is None else outer
        try:
            yield
        finally:
            self._held_noise = outer

    def _sample(self, log_alpha: Tensor, shape: tuple[int, ...], key: tuple[Any, ...]) -> Tensor:
        held = self._held_noise
        hc = self.config.gate
        u = held.get(key) if held is not None else None
        if u is None:
            u = hc.uniform_noise(log_alpha, generator=self._noise_generator(log_alpha.device), batch_shape=shape)
            if held is not None:
                held[key] = u
        return hc.sample_with(log_alpha, u)  # recomputed from the held noise: the same graph each time

    # ---- gates --------------------------------------------------------------------------
    def gates(
        self, *, deterministic: bool | None = None, batch: int | None = None, layer_index: int | None = None
    ) -> dict[str, Tensor]:
        """Gate values per edit type: ``[layer, head_index]``, or one edited layer's ``[head_index]``.

        Training mode samples (one draw shared by the batch, or ``[batch, ...]`` with
        ``per_example_noise``); eval mode uses the deterministic gate. With
        ``GateMode.NONE`` the gates are 1; with ``SHARED`` both types get the same sample.
        """
        deterministic = (not self.training) if deterministic is None else deterministic
        hc = self.config.gate
        out: dict[str, Tensor] = {}
        drawn: dict[str, Tensor] = {}
        for kind in ("additive", "multiplicative"):
            vec = getattr(self, kind, None)
            if vec is None:
                continue
            log_alpha = self._log_alpha(kind)
            if log_alpha is None:
                shape = vec.shape[:2] if layer_index is None else vec.shape[1:2]
                out[kind] = torch.ones(shape, device=vec.device, dtype=vec.dtype)
                continue
            if layer_index is not None:
                log_alpha = log_alpha[layer_index]
            key = "shared" if self.config.gate_mode is GateMode.SHARED else kind
            if key not in drawn:
                if deterministic:
                    drawn[key] = hc.deterministic(log_alpha)
                else:
                    shape = (batch,) if (batch and self.config.per_example_noise) else ()
                    drawn[key] = self._sample(log_alpha, shape, (layer_index, key, shape))
            out[kind] = drawn[key]
        return out

    def apply(
        self, z: Float[Tensor, "batch pos head_index d_head"], i: int
    ) -> Float[Tensor, "batch pos head_index d_head"]:
        """``(1 + g_m * m) * z + g_a * a`` for edited layer index ``i``, all heads at once.

        Computed in (at least) float32 from the float32 parameters, in one fused ``addcmul``,
        and rounded to ``z``'s dtype once: in bf16/fp16 a small ``m`` is not lost in a
        half-precision ``1 + g_m * m`` (which rounds to 1 while ``|g_m m| < 2^-8``), and no
        float32 copy of ``z`` is kept for the backward pass. The layer's parameters follow
        ``z`` to its device (a model split over devices).
        """
        g = self.gates(batch=z.shape[0], layer_index=i)

        def per_head(t: Tensor) -> Tensor:  # [h d], or [b h d] -> [b 1 h d] with per-example gates
            t = t.float().to(z.device)
            return t[:, None] if t.dim() == 3 else t

        scale: Tensor | None = None
        shift: Tensor | None = None
        if self.has_multiplicative:
            scale = per_head(1 + g["multiplicative"][..., None] * self.multiplicative[i])
        if self.has_additive:
            shift = per_head(g["additive"][..., None] * self.additive[i])
        if scale is not None and shift is not None:
            out = torch.addcmul(shift, z, scale)
        elif scale is not None:
            out = z * scale
        elif shift is not None:
            out = z + shift
        else:
            return z
        return out.to(z.dtype)

    # ---- where it acts ------------------------------------------------------------------
    def site_edits(self) -> list[tuple[Site, SiteFn]]:
        """:meth:`apply` at ``hook_z`` of every edited layer (the input of ``o_proj`` on the HF view)."""

        def at(i: int) -> SiteFn:
            return lambda z: self.apply(z, i)

        return [(Site(SiteKind.HOOK_Z, layer), at(i)) for i, layer in enumerate(self.layers)]

    # ---- training hooks (the trainer's interface; the maths is in jola_training) ---------
    def penalty(self, step: int) -> tuple[Tensor, float]:
        """The expected-L0 gate penalty of :attr:`sparsity` at loss call ``step``, and its lam."""
        return sparsity_penalty(self, self.sparsity, step)

    @property
    def penalty_counts_eval_steps(self) -> bool:
        return self.sparsity.counts_eval_steps

    def param_groups(self, lr: float, config: TrainConfig | None = None) -> list[dict[str, Any]]:
        """Vectors at ``lr``, gates at ``lr * config.gate_lr_scale`` (10x by default)."""
        scale = DEFAULT_GATE_LR_SCALE if config is None else config.gate_lr_scale
        return gate_param_groups(self, lr, scale)

    def epoch_metrics(self) -> dict[str, float]:
        return gate_report(self)

    def epoch_maps(self) -> dict[str, Tensor]:
        return self.head_maps()

    def summary_extras(self) -> dict[str, Any]:
        return {"closed_fraction": {k: 1.0 - v for k, v in self.open_fractions().items()}}

    def run_artifacts(self) -> dict[str, Any]:
        return {"head_maps.pt": self.head_maps()}

    # ---- inspection ---------------------------------------------------------------------
    def _full(self, per_layer: Tensor) -> Tensor:
        """Scatter an ``[edited_layer, head]`` tensor into ``[n_layers, n_heads]`` (zeros elsewhere)."""
        full = torch.zeros(self.dims.n_layers, self.dims.n_heads, dtype=per_layer.dtype)
        full[list(self.layers)] = per_layer.detach().float().cpu()
        return full

    @torch.no_grad()
    def head_maps(self) -> dict[str, Float[Tensor, "n_layers n_heads"]]:
        """``[layer, head]`` maps: eval gates, P(gate open), and edit-vector norms per type.

        An absent edit type, or a layer not edited, is 0 everywhere.
        """
        hc = self.config.gate
        maps: dict[str, Tensor] = {}
        gates = self.gates(deterministic=True)
        for kind in ("additive", "multiplicative"):
            vec = getattr(self, kind, None)
            if vec is None:
                zero = torch.zeros(self.dims.n_layers, self.dims.n_heads)
                maps[f"gate_{kind}"] = maps[f"p_open_{kind}"] = maps[f"norm_{kind}"] = zero
                continue
            log_alpha = self._log_alpha(kind)
            maps[f"gate_{kind}"] = self._full(gates[kind])
            p_open = hc.prob_open(log_alpha) if log_alpha is not None else torch.ones(vec.shape[:2])
            maps[f"p_open_{kind}"] = self._full(p_open)
            maps[f"norm_{kind}"] = self._full(vec.norm(dim=-1))
        return maps

    @torch.no_grad()
    def open_fractions(self) -> dict[str, float]:
        """Fraction of edited heads whose eval gate is > 0, per edit type present."""
        return {k: float((v > 0).float().mean()) for k, v in self.gates(deterministic=True).items()}

    @torch.no_grad()
    def without_heads(self, heads: Iterable[tuple[int, int, str]]) -> JolaEdit:
        """A copy with the given ``(layer, head, kind)`` edits switched off (gate closed).

        With a shared gate, closing either kind closes both; with no gates the vector is zeroed.
        """
        copy_ = copy.deepcopy(self)
        for layer, head, kind in heads:
            if layer not in self.layers:
                raise ValueError(f"layer {layer} is not edited by this JolaEdit (layers {self.layers})")
            if getattr(self, kind, None) is None:
                raise ValueError(f"this JolaEdit has no {kind!r} edit")
            i = self.layers.index(layer)
            log_alpha = copy_._log_alpha(kind)
            if log_alpha is None:
                getattr(copy_, kind)[i, head] = 0.0
            else:
                log_alpha[i, head] = -1e4
        return copy_

    def extra_repr(self) -> str:
        opened = ", ".join(f"{k} open {v:.0%}" for k, v in self.open_fractions().items())
        return (
            f"layers={len(self.layers)}/{self.dims.n_layers}, heads={self.dims.n_heads}, "
            f"d_head={self.dims.d_head}, edit={self.config.edit_type.value}, "
            f"gates={self.config.gate_mode.value}, params={self.n_trainable():,}" + (f", {opened}" if opened else "")
        )

    # ---- disk ---------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def from_config_dict(cls, model: nn.Module, config: dict[str, Any]) -> JolaEdit:
        return cls.for_model(model, JolaConfig.from_dict(config))

    def _tensor_names(self) -> list[str]:
        names = [k for k in ("additive", "multiplicative") if getattr(self, k, None) is not None]
        return names + [f"log_alpha_{g}" for g in self.gate_names]

    def to_safetensors(self) -> dict[str, Tensor]:
        """Keys like ``blocks.3.attn.hook_z.additive`` ([head_index, d_head]) per edited layer."""
        out = {}
        for name in self._tensor_names():
            stacked = getattr(self, name).detach().cpu().float()
            for i, layer in enumerate(self.layers):
                out[f"{hook_z_name(layer)}.{name}"] = stacked[i].contiguous()
        return out

    def load_safetensors(self, tensors: dict[str, Tensor]) -> None:
        expected = set()
        with torch.no_grad():
            for name in self._tensor_names():
                param = getattr(self, name)
                for i, layer in enumerate(self.layers):
                    key = f"{hook_z_name(layer)}.{name}"
                    expected.add(key)
                    if key not in tensors:
                        raise EditLoadError(f"saved weights lack {key!r}: the file does not match its config")
                    if tuple(tensors[key].shape) != tuple(param[i].shape):
                        raise EditLoadError(
                            f"{key}: saved shape {tuple(tensors[key].shape)} != expected {tuple(param[i].shape)}"
                        )
                    param[i].copy_(tensors[key])
        extra = sorted(set(tensors) - expected)
        if extra:
            raise EditLoadError(f"saved weights hold unexpected tensors {extra[:5]}")


def selected_heads(edit: JolaEdit) -> pd.DataFrame:
    """The heads the edit changes at evaluation: one row per (layer, head, kind) with gate > 0.

    Columns: layer, head, kind, gate, p_open, norm, label (``L{l}H{h}``); sorted by gate.
    """
    maps = edit.head_maps()
    rows = []
    for kind in ("additive", "multiplicative"):
        if getattr(edit, kind, None) is None:
            continue
        gate = maps[f"gate_{kind}"]
        for layer, head in (gate > 0).nonzero().tolist():
            if layer not in edit.layers:
                continue
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "kind": kind,
                    "gate": float(gate[layer, head]),
                    "p_open": float(maps[f"p_open_{kind}"][layer, head]),
                    "norm": float(maps[f"norm_{kind}"][layer, head]),
                    "label": f"L{layer}H{head}",
                }
            )
    columns = ["layer", "head", "kind", "gate", "p_open", "norm", "label"]
    df = pd.DataFrame(rows, columns=columns)
    return df.sort_values(["gate", "norm"], ascending=False, ignore_index=True)
