"""A TransformerLens model on hook points, dressed as the Hugging Face calls the evaluator makes.

The evaluator runs ``view(input_ids=, attention_mask=, position_ids=).logits`` and
``view.generate(...)`` on :func:`jolalens.hf_view.hf_view`. A model without that fast view
(a ``HookedTransformer``, a GPT-2 bridge) runs through :class:`HookPointLM` instead: the same
calls over a :class:`jolalens.runners.ModelRunner`, with greedy decoding that recomputes the
whole sequence each step (no KV cache: correct, slower).
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
        **_: Any,
    ) -> Tensor:
        """Greedy continuation of left-padded prompts: ``[batch, prompt + new]`` ids.

        As Hugging Face's greedy search: a finished row (its ``eos_token_id`` emitted) is
        padded with ``pad_token_id`` from then on.
        """
        if do_sample:
            raise ModelError("sampling is not supported on hook points; use do_sample=False")
        if num_beams != 1:
            raise ModelError(
                f"beam search (num_beams={num_beams}) needs the Hugging Face view, which "
                f"{type(self.runner.model).__name__} lacks; evaluate with num_beams=1"
            )
        ids = input_ids
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.long()
        pad = pad_token_id if pad_token_id is not None else 0
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _step in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.runner(ids, mask, positions)[:, -1]
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
            if eos_token_id is not None:
                done |= nxt == eos_token_id
                if bool(done.all()):
                    break
        return ids
