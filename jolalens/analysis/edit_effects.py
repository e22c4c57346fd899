"""How much each selected head's edit moves the answer: switch it off, re-score.

The complement of ablation-based localization: ablation asks what the *base* model needs;
this asks what the *edit* contributes, head by head.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import Example, PromptStyle, collate, model_tokenizer, padding_id, tokenize_example
from ..edit import Backend
from ..jola import JolaEdit, selected_heads
from ..scoring import answer_token_logprobs

__all__ = ["answer_logprobs", "edit_head_effects"]


@torch.no_grad()
def answer_logprobs(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    edit: JolaEdit | None = None,
    batch_size: int = 8,
    style: PromptStyle = PromptStyle.ALPACA,
    max_length: int = 400,
    backend: Backend | str | None = None,
) -> torch.Tensor:
    """Mean log-probability of each example's answer tokens, ``[n_examples]`` (edit attached).

    ``backend=None``: the HF view where the model has one, hook points otherwise.
    """
    from ..runners import runner_for

    tok = model_tokenizer(model)
    pad = padding_id(tok)
    rows = [tokenize_example(tok, ex, style=style, max_length=max_length) for ex in examples]
    out = []
    with runner_for(model, backend).attached(edit) as runner:
        device = runner.device
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size], pad, "right").to(device)
            logits = runner(batch.input_ids, batch.attention_mask, batch.position_ids)
            picked = answer_token_logprobs(logits, batch.labels)
            out.append(picked.sum(-1) / (batch.labels[:, 1:] != -100).sum(-1))
    return torch.cat(out).cpu()


def edit_head_effects(
    model: nn.Module,
    edit: JolaEdit,
    examples: Sequence[Example],
    *,
    top_k: int | None = 10,
    style: PromptStyle = PromptStyle.ALPACA,
    batch_size: int = 8,
    progress: bool = False,
    backend: Backend | str | None = None,
) -> pd.DataFrame:
    """For the ``top_k`` strongest open (head, kind) edits: the drop in mean answer log-prob
    when that one edit is switched off, the rest kept. Sorted by effect, largest first.
    ``style`` is the prompt format the edit was trained with (``"cloze"`` for the cloze protocol).
    """
    heads = selected_heads(edit)
    if top_k is not None:
        heads = heads.head(top_k)
    full = (
        answer_logprobs(model, examples, edit=edit, style=style, batch_size=batch_size, backend=backend).mean().item()
    )
    rows = []
    for row in tqdm(heads.itertuples(index=False), total=len(heads), disable=not progress, desc="edit effects"):
        reduced = edit.without_heads([(row.layer, row.head, row.kind)])
        without = (
            answer_logprobs(model, examples, edit=reduced, style=style, batch_size=batch_size, backend=backend)
            .mean()
            .item()
        )
        rows.append(
            {
                "label": row.label,
                "layer": row.layer,
                "head": row.head,
                "kind": row.kind,
                "gate": row.gate,
                "logprob_with_edit": full,
                "logprob_without_this": without,
                "effect": full - without,
            }
        )
    columns = ["label", "layer", "head", "kind", "gate", "logprob_with_edit", "logprob_without_this", "effect"]
    return pd.DataFrame(rows, columns=columns).sort_values("effect", ascending=False, ignore_index=True)
