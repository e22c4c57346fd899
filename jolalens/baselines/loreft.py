"""LoReFT (Wu, Arora et al., NeurIPS 2024): a low-rank edit of the residual stream at prompt positions.

``h <- h + R^T (W h + b - R h)`` at ``blocks.{l}.hook_resid_post`` (the output of the Hugging
Face decoder layer ``l``), with ``R`` [r, d] of orthonormal rows and ``W h + b`` an
``nn.Linear(d, r)``. Inside the subspace spanned by ``R`` the component ``R h`` is replaced by
``W h + b``; the rest of ``h`` is untouched.

As in pyreft: ``R^T`` is stored as a ``[d, r]`` weight initialised with ``orthogonal_`` and kept
orthonormal through training by ``torch.nn.utils.parametrizations.orthogonal``; dropout (0 in
the commonsense recipe) applies to the whole edited ``h``; only the first ``first_n`` and last
``last_n`` **prompt** tokens are edited (``f7+l7``), each capped at ``len(prompt) // 2``;
response and generated tokens never are. With ``shared`` the same intervention serves both
windows (pyreft's ``--share_weights``), otherwise each layer has one for each.

Where the prompt is, per forward call (see :func:`prompt_windows`):

* the trainer and the packed scorer declare :func:`jolalens.edit.answer_positions`; the first
  answer position of a row is its last prompt token;
* without a declaration (``generate``) the first call, with no KV cache, is the prompt; later
  cached calls (one new token each) edit nothing, like pyreft's ``intervene_on_prompt``;
* on the HF view the 2-D attention mask gives each token's index in its row, so left padding
  and a KV cache are handled; the TransformerLens backend assumes right or no padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from ..edit import (
    Backend,
    EditHandle,
    HookFn,
    ModuleHook,
    current_answer_positions,
    register_method,
)
from ..errors import JolaError
from ..models import ModelDims
from ..sites import Site, SiteKind, hf_hook, tl_hook
from ._common import BaselineEdit

__all__ = [
    "LoreftConfig",
    "LoreftEdit",
    "LoreftIntervention",
    "loreft_search_space",
    "prompt_windows",
    "resid_post_name",
    "set_parameters",
]


def resid_post_name(layer: int) -> str:
    """``blocks.{layer}.hook_resid_post``: the hook name of the layer's ``resid_post`` site."""
    return Site(SiteKind.RESID_POST, layer).hook_name


@dataclass(frozen=True)
class LoreftConfig:
    """Rank, layers (``None``: all), the ``f{first_n}+l{last_n}`` prompt windows, weight sharing."""

    rank: int = 8
    layers: tuple[int, ...] | None = None
    first_n: int = 7
    last_n: int = 7
    shared: bool = True
    dropout: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoReFT rank must be >= 1, got {self.rank}")
        if self.first_n < 0 or self.last_n < 0 or self.first_n + self.last_n == 0:
            raise ValueError("LoReFT needs first_n >= 0, last_n >= 0 and at least one edited position")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoReFT dropout must be in [0, 1), got {self.dropout}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))

    def n_parameters(self, dims: ModelDims) -> int:
        """``2 r d + r`` per intervention; one per layer if shared, else two."""
        n_layers = dims.n_layers if self.layers is None else len(self.layers)
        per = 2 * self.rank * dims.d_model + self.rank
        return n_layers * per * (1 if self.shared else 2)


class _Rotation(nn.Module):
    """``R^T`` as a ``[d, r]`` weight with orthonormal columns (pyreft's ``LowRankRotateLayer``)."""

    def __init__(self, d: int, r: int, generator: torch.Generator) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(d, r, generator=generator))
        self.weight = nn.Parameter(q.contiguous())


class LoreftIntervention(nn.Module):
    """One LoReFT intervention: ``h + (W h + b - h R^T) R`` (row vectors), computed in float32."""

    def __init__(self, d: int, r: int, dropout: float, generator: torch.Generator) -> None:
        super().__init__()
        self.rotate = _Rotation(d, r, generator)
        parametrizations.orthogonal(self.rotate)  # keeps R orthonormal at every step, as pyreft
        self.learned_source = nn.Linear(d, r)
        bound = 1 / d**0.5  # nn.Linear's default init, drawn from the edit's own generator
        with torch.no_grad():
            self.learned_source.weight.uniform_(-bound, bound, generator=generator)
            self.learned_source.bias.uniform_(-bound, bound, generator=generator)
        self.dropout = nn.Dropout(dropout)

    @property
    def R(self) -> Float[Tensor, "r d"]:
        return self.rotate.weight.T

    def forward(self, h: Float[Tensor, "... d"]) -> Tensor:
        x = h.float()
        rt = self.rotate.weight  # computed once per call from the parametrisation
        out = x + (self.learned_source(x) - x @ rt) @ rt.T
        return self.dropout(out).to(h.dtype)


def prompt_windows(
    index: Tensor, real: Tensor, answer: Tensor | None, past: int, first_n: int, last_n: int
) -> tuple[Bool[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Masks of the first-``first_n`` and last-``last_n`` prompt tokens in one forward call.

    ``index`` [batch, pos]: each token's position in its row (0 = first real token);
    ``real``: not padding; ``answer``: the declared answer-position mask or ``None``; ``past``:
    cached tokens before this call. Windows are capped at ``len(prompt) // 2`` (pyreft).
    """
    batch = index.shape[0]
    has_answer = answer.any(-1) if answer is not None else torch.zeros(batch, dtype=torch.bool, device=index.device)
    last_prompt = torch.where(
        has_answer,
        index.gather(1, answer.float().argmax(-1, keepdim=True)).squeeze(1) if answer is not None else index[:, -1],
        torch.where(real, index, torch.full_like(index, -1)).max(-1).values,
    )
    # with a cache and no answer declared, this call holds no prompt token (a decoding step)
    in_call = has_answer | torch.tensor(past == 0, device=index.device)
    prompt_len = torch.where(in_call, last_prompt + 1, torch.zeros_like(last_prompt))[:, None]
    k_first = torch.clamp(prompt_len // 2, max=first_n)
    k_last = torch.clamp(prompt_len // 2, max=last_n)
    first = real & (index < k_first)
    last = real & (index >= prompt_len - k_last) & (index < prompt_len)
    return first, last


@register_method
class LoreftEdit(BaselineEdit):
    """LoReFT interventions on the residual stream (the ``resid_post`` site) of the chosen layers.

    It keeps its own :meth:`fwd_hooks` and :meth:`hf_hooks` instead of one ``site_edits()``
    function per site: which positions it edits depends on the backend. On the HF view a
    pre-hook on the decoder stack (added by :meth:`attach`) reads the attention mask and KV cache
    to locate each row's prompt tokens (left padding, cached decoding steps); on hook points
    the windows come from the tensor itself (right or no padding). Both still use the
    ``resid_post`` :class:`~jolalens.sites.Site` for the hook point, the module and the tuple
    output of a decoder layer.
    """

    method = "loreft"
    config_cls = LoreftConfig
    edits_prompt_positions = True  # scorers must run each prompt whole (no shared-prefix cache)

    def __init__(self, dims: ModelDims, config: LoreftConfig | None = None) -> None:
        config = config or LoreftConfig()
        super().__init__(dims, config)
        self.layers = self._layers(config.layers)
        gen = torch.Generator().manual_seed(config.seed)
        n_slots = 1 if config.shared else 2
        self.interventions = nn.ModuleList(
            LoreftIntervention(dims.d_model, config.rank, config.dropout, gen)
            for _ in range(len(self.layers) * n_slots)
        )
        self._windows: tuple[Tensor, Tensor] | None = None  # set per HF forward call by the model pre-hook

    def intervention(self, layer: int, slot: int = 0) -> LoreftIntervention:
        """The intervention of ``layer`` for the first (0) or last (1) window (one if shared)."""
        i = self.layers.index(layer)
        return self.interventions[i if self.config.shared else 2 * i + slot]  # type: ignore[return-value]

    # ---- the edit at one site -------------------------------------------------------------
    def apply(self, h: Float[Tensor, "batch pos d_model"], layer: int, first: Tensor, last: Tensor) -> Tensor:
        if tuple(first.shape) != tuple(h.shape[:2]):
            raise JolaError(
                f"LoReFT position masks {tuple(first.shape)} do not match [batch, pos] = {tuple(h.shape[:2])}"
            )
        if self.config.shared:  # one intervention for both windows: compute it once
            return torch.where((first | last)[..., None], self.intervention(layer)(h), h)
        out = torch.where(first[..., None], self.intervention(layer, 0)(h), h)
        return torch.where(last[..., None], self.intervention(layer, 1)(h), out)

    def _tl_windows(self, h: Tensor) -> tuple[Tensor, Tensor]:
        b, s = h.shape[:2]
        answer = current_answer_positions()
        if answer is not None and tuple(answer.shape) != (b, s):
            raise JolaError(f"answer_positions mask {tuple(answer.shape)} does not match [batch, pos] = {(b, s)}")
        index = torch.arange(s, device=h.device).expand(b, s)
        real = torch.ones((b, s), dtype=torch.bool, device=h.device)
        return prompt_windows(index, real, answer, 0, self.config.first_n, self.config.last_n)

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        def at(layer: int) -> Callable[[Tensor], Tensor]:
            return lambda h: self.apply(h, layer, *self._tl_windows(h))

        return [tl_hook(Site(SiteKind.RESID_POST, layer), at(layer)) for layer in self.layers]

    def hf_hooks(self, view: nn.Module) -> list[ModuleHook]:
        def at(layer: int) -> Callable[[Tensor], Tensor]:
            def loreft_block_output(h: Tensor) -> Tensor:
                if self._windows is None:
                    raise JolaError(
                        "LoReFT's decoder-layer hook ran without its model pre-hook: attach the edit with "
                        "edit.attach(model)"
                    )
                return self.apply(h, layer, *self._windows)

            return loreft_block_output

        return [hf_hook(Site(SiteKind.RESID_POST, layer), at(layer), view) for layer in self.layers]

    def _capture_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Pre-hook on the decoder stack: where this call's prompt tokens are (padding, cache)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"][..., 0]
        b, s = ids.shape[:2]
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        if mask is None:
            index = past + torch.arange(s, device=ids.device).expand(b, s)
            real = torch.ones((b, s), dtype=torch.bool, device=ids.device)
        elif mask.dim() == 2:
            index = (mask.long().cumsum(-1) - 1)[:, -s:]
            real = mask[:, -s:].bool()
        else:
            raise JolaError(f"LoReFT needs a 2-D attention mask to locate prompt tokens, got shape {tuple(mask.shape)}")
        answer = current_answer_positions()
        if answer is not None and tuple(answer.shape) != (b, s):
            raise JolaError(f"answer_positions mask {tuple(answer.shape)} does not match [batch, pos] = {(b, s)}")
        self._windows = prompt_windows(index, real, answer, past, self.config.first_n, self.config.last_n)

    def attach(self, model: nn.Module, backend: Backend | str | None = Backend.HF_VIEW) -> EditHandle:
        """The base class's hooks plus, on the HF view, the pre-hook that locates prompt tokens."""
        handle = super().attach(model, backend)
        if handle.backend is Backend.HF_VIEW:
            from ..hf_view import hf_view

            stack = hf_view(model).model
            handle._removers.insert(0, stack.register_forward_pre_hook(self._capture_call, with_kwargs=True).remove)
        return handle

    # ---- bookkeeping ----------------------------------------------------------------------
    def _saved(self) -> dict[str, Tensor]:
        raise NotImplementedError  # R is parametrised: see to_safetensors / load_safetensors

    def _keys(self) -> list[tuple[str, LoreftIntervention]]:
        out = []
        for layer in self.layers:
            for slot, name in ((0, "first"), (1, "last"))[: 1 if self.config.shared else 2]:
                prefix = resid_post_name(layer) + ("" if self.config.shared else f".{name}")
                out.append((prefix, self.intervention(layer, slot)))
        return out

    def to_safetensors(self) -> dict[str, Tensor]:
        """``{site}.R`` [r, d] (orthonormal rows), ``{site}.W`` [r, d], ``{site}.b`` [r]."""
        out = {}
        for prefix, unit in self._keys():
            out[f"{prefix}.R"] = unit.R.detach().float().cpu().contiguous()
            out[f"{prefix}.W"] = unit.learned_source.weight.detach().float().cpu().contiguous()
            out[f"{prefix}.b"] = unit.learned_source.bias.detach().float().cpu().contiguous()
        return out

    def load_safetensors(self, tensors: dict[str, Tensor]) -> None:
        from ..errors import EditLoadError

        expected = self.to_safetensors()
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or extra:
            raise EditLoadError(
                f"saved loreft weights do not match its config: missing {missing[:4]}, unexpected {extra[:4]}"
            )
        for key, want in expected.items():
            if tuple(tensors[key].shape) != tuple(want.shape):
                raise EditLoadError(f"{key}: saved shape {tuple(tensors[key].shape)} != expected {tuple(want.shape)}")
        for prefix, unit in self._keys():
            set_parameters(unit, tensors[f"{prefix}.R"], tensors[f"{prefix}.W"], tensors[f"{prefix}.b"])

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"rank={c.rank}, layers={len(self.layers)}/{self.dims.n_layers}, f{c.first_n}+l{c.last_n}, "
            f"{'shared' if c.shared else 'unshared'}, params={self.n_trainable():,}"
        )


@torch.no_grad()
def set_parameters(unit: LoreftIntervention, R: Tensor, W: Tensor, b: Tensor) -> None:
    """Set ``R`` [r, d] (orthonormal rows; re-parametrised), ``W`` [r, d] and ``b`` [r]."""
    device = unit.learned_source.weight.device
    unit.rotate.weight = R.T.to(device=device, dtype=torch.float32).contiguous()  # right_inverse of the parametrisation
    unit.learned_source.weight.copy_(W)
    unit.learned_source.bias.copy_(b)


def loreft_search_space(dims: ModelDims) -> list[dict[str, Any]]:
    """From the published commonsense recipe (r=8, lr 9e-4, all layers, f7+l7, shared) outwards;
    the last point is the repo README's tiny-data recipe (r=4, lr 4e-3)."""
    return [{"lr": 9e-4, "rank": 8}, {"lr": 3e-3, "rank": 8}, {"lr": 3e-4, "rank": 8}, {"lr": 4e-3, "rank": 4}]
