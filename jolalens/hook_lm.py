"""A TransformerLens model on hook points, dressed as the Hugging Face calls the evaluator makes.

The evaluator runs ``view(input_ids=, attention_mask=, position_ids=).logits`` and
``view.generate(...)`` on :func:`jolalens.hf_view.hf_view`. A model without that fast view
(a ``HookedTransformer``, a GPT-2 bridge) runs through :class:`HookPointLM` instead: the same
calls over a :class:`jolalens.runners.ModelRunner`, with greedy decoding and beam search
(:mod:`jolalens.beam_search`) that recompute the whole sequence each step (no KV cache:
correct, slower).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ModelError
from .runners import ModelRunner

logger = logging.getLogger(__name__)

__all__ = ["HookPointLM"]


class HookPointLM:
    """``runner`` behind the Hugging Face call convention (``.logits``, ``generate``)."""

    config = None  # no Hugging Face config: callers that need a KV cache take another path

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.runner.model.parameters()

    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        **_: Any,
    ) -> SimpleNamespace:
        return SimpleNamespace(logits=self.runner(input_ids, attention_mask, position_ids))

    def _generation_default(self, name: str, default: Any) -> Any:
        """A beam-search setting from the Hugging Face model's generation config (a bridge), else
        Hugging Face's default: what ``generate`` on the HF view would use."""
        config = getattr(getattr(self.runner.model, "original_model", None), "generation_config", None)
        value = getattr(config, name, None)
        return default if value is None else value

    def _next_logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.runner(ids, mask, positions)[:, -1]

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        max_new_tokens: int,
        num_beams: int = 1,
        do_sample: bool = False,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
        length_penalty: float | None = None,
        early_stopping: bool | str | None = None,
        **_: Any,
    ) -> Tensor:
        """Greedy (``num_beams=1``) or beam-search continuation of left-padded prompts:
        ``[batch, prompt + new]`` ids.

        As Hugging Face's greedy search, a finished row (its ``eos_token_id`` emitted) is padded
        with ``pad_token_id`` from then on; beam search is :func:`jolalens.beam_search.beam_search`
        (``length_penalty`` and ``early_stopping`` default to the bridge's Hugging Face generation
        config, else to Hugging Face's defaults 1.0 and False).
        """
        if do_sample:
            raise ModelError("sampling is not supported on hook points; use do_sample=False")
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        if num_beams > 1:
            from .beam_search import beam_search

            return beam_search(
                self._next_logits,
                input_ids,
                mask,
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
                length_penalty=self._generation_default("length_penalty", 1.0)
                if length_penalty is None
                else length_penalty,
                early_stopping=self._generation_default("early_stopping", False)
                if early_stopping is None
                else early_stopping,
            )
        ids = input_ids
        pad = pad_token_id if pad_token_id is not None else 0
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _step in range(max_new_tokens):
            nxt = self._next_logits(ids, mask).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
            if eos_token_id is not None:
                done |= nxt == eos_token_id
                if bool(done.all()):
                    break
        return ids
