"""Greedy or beam decoding of each example's prompt (``Protocol.GEN``), as the paper decodes.

Prompts are left-padded and sorted by length so that a batch wastes little padding; the
continuation after each prompt is decoded without special tokens. Reading an answer out of
it is :mod:`jolalens.extraction`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import Example, PromptStyle, clip_prompt, format_prompt, model_tokenizer, pad_sequences, padding_id
from .runners import attached_lm

__all__ = ["generate_outputs"]


def generate_outputs(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    edit: Any = None,
    style: PromptStyle = PromptStyle.ALPACA,
    batch_size: int = 16,
    num_beams: int = 4,
    max_new_tokens: int = 16,
    max_length: int = 400,
    progress: bool = True,
) -> list[str]:
    """The decoded continuation of each example's prompt (``edit`` attached), in input order.

    ``num_beams=1`` is greedy decoding; prompts longer than ``max_length`` lose their start
    (:func:`jolalens.data.clip_prompt`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = model_tokenizer(model)
    pad = padding_id(tok)
    add_special = PromptStyle(style) is PromptStyle.ALPACA
    encoded = [
        tok(format_prompt(ex.instruction, style, tok), add_special_tokens=add_special).input_ids for ex in examples
    ]
    prompts = [clip_prompt(ids, max_length, max_length=max_length) for ids in encoded]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(examples)
    with (
        attached_lm(model, edit) as view,
        torch.inference_mode(),
        tqdm(total=len(examples), desc="generate", unit="item", disable=not progress) as bar,
    ):
        device = next(view.parameters()).device
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = pad_sequences([prompts[i] for i in idx], pad, "left")
            width = batch.input_ids.shape[1]
            out = view.generate(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                do_sample=False,
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=tok.eos_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for r, i in enumerate(idx):
                outputs[i] = tok.decode(out[r, width:], skip_special_tokens=True)
            bar.update(len(idx))
    return outputs
