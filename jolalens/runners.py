"""One way to run any TransformerLens model: ``runner(input_ids, attention_mask, position_ids)``.

jolalens runs a model two ways (:class:`jolalens.edit.Backend`): the fast Hugging Face view
behind a ``TransformerBridge`` (SDPA, KV cache) and TransformerLens hook points, which every
TransformerLens model has, the classic ``HookedTransformer`` included. :func:`runner_for`
chooses the fast path where it exists and hides how each model wants padding and positions:

* HF view and bridge: ``position_ids`` are passed as given.
* ``HookedTransformer`` (TransformerLens 3.x): its ``forward`` takes no ``position_ids``; with an
  ``attention_mask`` it derives positions as ``cumsum(mask) - 1`` (left padding included), so
  the runner passes the mask and checks that the requested positions are exactly those.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .edit import Backend
from .errors import ModelError
from .models import is_hooked_transformer

logger = logging.getLogger(__name__)

__all__ = [
    "ModelRunner",
    "attached_lm",
    "has_hf_view",
    "is_hooked_transformer",
    "resolve_backend",
    "runner_for",
]


def has_hf_view(model: nn.Module) -> bool:
    """Whether the fast HF view exists: a bridge around a model with ``o_proj`` Linears."""
    if not isinstance(getattr(model, "original_model", None), nn.Module):
        return False
    from .hf_view import hf_view, o_proj_modules

    try:
        o_proj_modules(hf_view(model))
    except ModelError as exc:
        logger.debug("no HF view for %s: %s", type(model).__name__, exc)
        return False
    return True


def resolve_backend(model: nn.Module, backend: Backend | str | None = None) -> Backend:
    """``backend`` as a :class:`Backend`; ``None`` or ``"auto"``: the HF view where it exists."""
    if backend is None or backend == "auto":
        return Backend.HF_VIEW if has_hf_view(model) else Backend.HOOK_POINTS
    resolved = Backend(backend)
    if resolved is Backend.HF_VIEW and not isinstance(getattr(model, "original_model", None), nn.Module):
        raise ModelError(
            f"backend='hf_view' needs a TransformerBridge; {type(model).__name__} has no Hugging "
            "Face model behind it. Use backend='hook_points' (or leave the backend unset)."
        )
    return resolved


def _mask_positions(attention_mask: Tensor) -> Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ModelRunner:
    """A model and a backend behind one call: ``runner(ids, mask, positions) -> logits``.

    ``net`` is the module that runs (``hf_view(model)`` or the model itself); an edit attached
    with the same backend (:meth:`attached`) acts on it.
    """

    def __init__(self, model: nn.Module, backend: Backend | str | None = None) -> None:
        self.model = model
        self.backend = resolve_backend(model, backend)
        self.hooked = self.backend is Backend.HOOK_POINTS and is_hooked_transformer(model)
        if self.backend is Backend.HF_VIEW:
            from .hf_view import hf_view

            self.net: Any = hf_view(model)
        else:
            self.net = model

    def __repr__(self) -> str:
        kind = "HookedTransformer" if self.hooked else type(self.model).__name__
        return f"ModelRunner({kind}, backend={self.backend.value})"

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return getattr(self.model, "tokenizer", None)

    def _hooked_mask(self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None) -> Tensor:
        """The mask to hand a HookedTransformer, after checking the positions it will derive."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is not None:
            real = attention_mask.bool()
            derived = _mask_positions(attention_mask)
            if not torch.equal(position_ids.to(derived.device)[real], derived[real]):
                raise ModelError(
                    "a HookedTransformer derives positions from attention_mask (cumsum - 1); these "
                    "position_ids differ. Pass position_ids=None, or use a TransformerBridge."
                )
        return attention_mask

    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[batch, pos, d_vocab]``; padding either side, marked by ``attention_mask``.

        No KV cache is built (a full forward needs none; a layer recomputed under activation
        checkpointing would append to it a second time).
        """
        if self.backend is Backend.HF_VIEW:
            return self.net(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits
        if self.hooked:
            mask = self._hooked_mask(input_ids, attention_mask, position_ids)
            return self.net(input_ids, attention_mask=mask)
        return self.net(input_ids, attention_mask=attention_mask, position_ids=position_ids)

    def logits_where(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        where: Tensor,
    ) -> Tensor:
        """Logits ``[n, d_vocab]`` at the positions where the ``[batch, pos]`` bool ``where`` holds.

        On the HF view the unembedding runs only there (a short answer after a long prompt
        saves most of its cost); the maths is that of ``runner(...)[where]``.
        """
        if self.backend is Backend.HF_VIEW:
            hidden = self.net.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
            # on a model split over devices the hidden state and lm_head's output may sit on later
            # devices; the logits come back to the mask's device (a no-op on one device)
            return self.net.lm_head(hidden[where.to(hidden.device)]).to(where.device)
        return self(input_ids, attention_mask, position_ids)[where]

    def layers(self) -> list[nn.Module]:
        """The decoder layers this runner's forward goes through, in order (for checkpointing)."""
        if self.backend is Backend.HF_VIEW:
            from .hf_view import decoder_layers

            return list(decoder_layers(self.net))
        blocks = getattr(self.net, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise ModelError(f"{type(self.net).__name__} has no `blocks` to checkpoint")
        return list(blocks)

    @contextmanager
    def attached(self, edit: Any) -> Iterator[ModelRunner]:
        """This runner with ``edit`` attached (on this runner's backend) for the block."""
        if edit is None:
            yield self
            return
        with edit.attached(self.model, self.backend):
            yield self


def runner_for(model: nn.Module, backend: Backend | str | None = None) -> ModelRunner:
    """The runner of ``model``: HF view where it exists (``backend=None``), else hook points."""
    return ModelRunner(model, backend)


@contextmanager
def attached_lm(model: nn.Module, edit: Any) -> Iterator[Any]:
    """A Hugging Face-style causal LM of ``model`` with ``edit`` attached, for evaluation.

    The HF view (SDPA, KV cache, ``generate``) where the model has one; else its hook points
    behind the same calls (:class:`jolalens.hook_lm.HookPointLM`, whose ``config`` is ``None``).
    """
    from .hf_view import hf_view
    from .hook_lm import HookPointLM

    runner = runner_for(model)
    with runner.attached(edit):
        yield hf_view(model) if runner.backend is Backend.HF_VIEW else HookPointLM(runner)
