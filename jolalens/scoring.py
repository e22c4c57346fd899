"""Log-likelihood scoring of answer options (``Protocol.LOGLIK``, and the machinery of ``CLOZE``).

Each option is ranked by the summed log-probability of its tokens after the prompt: no
dependence on output format, and fast, because the prompt is run once per item (and a prefix
shared by all prompts, such as the Alpaca header, once in all) with the options scored from
the KV cache. The packed path (one prompt+option row per option) is kept as an independent
reference, and for models without a KV cache (hook points) or edits that must see the whole
prompt. All forward passes run on :func:`jolalens.runners.attached_lm`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import (
    Example,
    PromptStyle,
    answer_mask,
    clip_prompt,
    collate,
    format_prompt,
    model_tokenizer,
    pad_sequences,
    padding_id,
    tokenize_example,
)
from .edit import answer_positions
from .errors import DataError
from .runners import attached_lm

__all__ = [
    "answer_token_logprobs",
    "cache_keyword",
    "cached_choice_logprobs",
    "check_choices",
    "choice_logprobs",
    "prefix_cache",
    "repeated_cache",
    "common_prefix",
    "encode_choices",
    "score_choices",
]

Encoded = tuple[list[int], list[list[int]]]  # prompt ids, and each choice's ids


def answer_token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """``[batch, pos - 1]``: each answer token's log-probability under the logits that predict it.

    ``labels`` marks answer tokens (``-100`` elsewhere), as :func:`jolalens.data.tokenize_example`
    writes them; positions that predict no answer token hold 0, so ``.sum(-1)`` is a row's
    summed answer log-probability.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    return logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (target != -100)


def encode_choices(tok: Any, ex: Example, style: PromptStyle, max_length: int) -> Encoded:
    """Prompt ids and each choice's ids, cut exactly as :func:`tokenize_example` would.

    Label and chat styles only: cloze pairs are encoded by :func:`jolalens.cloze.encoded_entries`.
    """
    assert ex.choices is not None
    if PromptStyle(style) is PromptStyle.CLOZE:
        raise ValueError("encode_choices does not encode cloze pairs; use jolalens.cloze.encoded_entries")
    prompt = tok(
        format_prompt(ex.instruction, style, tok), add_special_tokens=PromptStyle(style) is PromptStyle.ALPACA
    ).input_ids
    choice_ids = [tok(c, add_special_tokens=False).input_ids for c in ex.choices]
    if any(not c for c in choice_ids):
        raise DataError(f"a choice of {ex.choices} tokenizes to nothing")
    keep = max_length - max(len(c) for c in choice_ids)
    if keep < 1:
        raise DataError(f"the choices {ex.choices} do not fit max_length={max_length}")
    return clip_prompt(prompt, keep, max_length=max_length), choice_ids


def check_choices(examples: Sequence[Example]) -> None:
    """:class:`DataError` unless every example has answer options to score."""
    bad = [i for i, ex in enumerate(examples) if not ex.choices]
    if bad:
        raise DataError(
            f"log-likelihood scoring needs answer options, but example {bad[0]} (and {len(bad) - 1} "
            "more) has no 'choices'; use protocol='gen' for generation tasks"
        )


def _choice_logprobs_packed(
    view: nn.Module,
    tok: Any,
    examples: Sequence[Example],
    style: PromptStyle,
    max_length: int,
    batch_size: int,
    bar: Any,
) -> list[list[float]]:
    """Reference path: one right-padded row per (item, choice), scored with position ids."""
    rows, owners = [], []
    for i, ex in enumerate(examples):
        for c in ex.choices or ():
            rows.append(tokenize_example(tok, ex, style=style, max_length=max_length, answer=c))
            owners.append(i)
    sums: list[list[float]] = [[] for _ in examples]
    pad = padding_id(tok)
    device = next(view.parameters()).device
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad, "right").to(device)
        with answer_positions(answer_mask(batch.labels)):
            logits = view(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
            ).logits
        for r, total in enumerate(answer_token_logprobs(logits, batch.labels).sum(-1).tolist()):
            sums[owners[start + r]].append(total)
        bar.update(len({owners[start + r] for r in range(len(batch.input_ids))}))
    return sums


def cache_keyword(view: nn.Module) -> str:
    """``cache`` in recent transformers (``past_key_values`` is deprecated there), else the old name."""
    return "cache" if "cache" in inspect.signature(view.forward).parameters else "past_key_values"


def prefix_cache(view: nn.Module, prefix: list[int]) -> Any:
    """A KV cache of ``prefix`` run once through ``view`` (``None`` for an empty prefix)."""
    from transformers import DynamicCache

    if not prefix:
        return None
    device = next(view.parameters()).device
    cache = DynamicCache(config=getattr(view, "config", None))
    with answer_positions(torch.zeros((1, len(prefix)), dtype=torch.bool, device=device)):
        view(
            input_ids=torch.tensor([prefix], device=device),
            **{cache_keyword(view): cache},
            use_cache=True,
            logits_to_keep=1,
        )
    return cache


def repeated_cache(cache: Any, rows: int) -> Any:
    """A copy of a one-row KV cache with ``rows`` rows (the prefix shared by a batch)."""
    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(rows)
    return out


def common_prefix(seqs: Sequence[list[int]]) -> int:
    """The length of the prefix all ``seqs`` share, leaving every one at least one token of its own."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for k in range(max(n, 0)):
        tok_id = first[k]
        if any(s[k] != tok_id for s in seqs):
            return k
    return max(n, 0)


def cached_choice_logprobs(
    view: nn.Module, tok: Any, encoded: Sequence[Encoded], batch_size: int, bar: Any
) -> list[list[float]]:
    """Summed log-probs of each entry's choice ids after its prompt ids (KV-cache sharing).

    The prefix all prompts share runs once; each batch of prompts (left-padded, so that every
    prompt ends at the last column) runs once from a copy of its cache; the choices' tokens
    after the first run from the prompts' cache, right-padded.
    """
    from transformers import DynamicCache

    device = next(view.parameters()).device
    config: Any = view.config  # the HF view's model config (KV-cache layout)
    pad = padding_id(tok)
    n_prefix = common_prefix([p for p, _ in encoded])
    shared = prefix_cache(view, encoded[0][0][:n_prefix])
    sums: list[list[float]] = [[] for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        prompts = pad_sequences([encoded[i][0][n_prefix:] for i in idx], pad, "left")
        width = prompts.input_ids.shape[1]
        pos = n_prefix + prompts.position_ids
        full_mask = torch.cat([torch.ones((len(idx), n_prefix), dtype=torch.long), prompts.attention_mask], dim=1)
        cache = repeated_cache(shared, len(idx)) if shared is not None else DynamicCache(config=config)
        last_prompt_token = torch.zeros((len(idx), width), dtype=torch.bool, device=device)
        last_prompt_token[:, -1] = True  # the only position here that predicts an answer token
        with answer_positions(last_prompt_token):
            out = view(
                input_ids=prompts.input_ids.to(device),
                attention_mask=full_mask.to(device),
                position_ids=pos.to(device),
                **{cache_keyword(view): cache},
                use_cache=True,
                logits_to_keep=1,
            )
        first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        # one row per (item, choice) for the choice tokens after the first
        rows = [(r, c_ids) for r, i in enumerate(idx) for c_ids in encoded[i][1]]
        totals = [float(first_logp[r, c_ids[0]]) for r, c_ids in rows]
        longer = [k for k, (_, c_ids) in enumerate(rows) if len(c_ids) > 1]
        if longer:
            conts = pad_sequences([rows[k][1][:-1] for k in longer], pad, "right")
            owner = torch.tensor([rows[k][0] for k in longer])
            cache.batch_select_indices(owner.to(device))
            c_pos = pos[owner, -1:] + 1 + torch.arange(conts.input_ids.shape[1])
            c_full = torch.cat([full_mask[owner], conts.attention_mask], dim=1)
            with answer_positions(conts.attention_mask.bool().to(device)):
                logits = view(
                    input_ids=conts.input_ids.to(device),
                    attention_mask=c_full.to(device),
                    position_ids=c_pos.to(device),
                    **{cache_keyword(view): cache},
                    use_cache=True,
                ).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for j, k in enumerate(longer):
                target = torch.tensor(rows[k][1][1:], device=device)
                totals[k] += float(logp[j, : len(target)].gather(-1, target[:, None]).sum())
        for (r, _), total in zip(rows, totals, strict=True):
            sums[idx[r]].append(total)
        bar.update(len(idx))
    return sums


def choice_logprobs(
    view: nn.Module, tok: Any, encoded: Sequence[Encoded], batch_size: int, bar: Any
) -> list[list[float]]:
    """Summed log-probs of each entry's choice ids after its prompt ids, by the fastest exact path.

    One row per item with the options as a token tree (:mod:`jolalens.option_tree`) where the
    model takes custom attention masks, else :func:`cached_choice_logprobs`.
    """
    from .option_tree import option_tree_logprobs, supports_option_tree  # it imports this module

    if not encoded:
        return []
    n_prefix = common_prefix([p for p, _ in encoded])
    longest = max(len(p) + sum(len(c) for c in cs) for p, cs in encoded)
    if supports_option_tree(view, longest):
        return option_tree_logprobs(view, tok, encoded, batch_size, bar, n_prefix=n_prefix)
    return cached_choice_logprobs(view, tok, encoded, batch_size, bar)


def score_choices(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    edit: Any = None,
    style: PromptStyle = PromptStyle.ALPACA,
    batch_size: int = 16,
    max_length: int = 400,
    share_prefix: bool = True,
    progress: bool = True,
) -> list[list[float]]:
    """Summed log-probability of each example's choices after its prompt (one list per example).

    ``style=PromptStyle.CLOZE`` scores lm-eval's (context, continuation) pairs
    (:mod:`jolalens.cloze`). ``share_prefix=False`` scores one packed prompt+choice row per
    option instead: slower, kept as an independent reference for the shared paths, and used for
    edits that must see each prompt whole (LoReFT) and for models without a KV cache.
    """
    check_choices(examples)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = model_tokenizer(model)
    style = PromptStyle(style)
    if getattr(edit, "edits_prompt_positions", False):
        share_prefix = False  # a shared-prefix cache would split the prompt LoReFT must see whole
    if style is PromptStyle.CLOZE:
        from .cloze import encoded_entries  # the cloze module builds on this one

        encoded, where = encoded_entries(tok, examples, max_length)
    else:
        encoded = [encode_choices(tok, ex, style, max_length) for ex in examples]
        where = [[(i, k) for k in range(len(ex.choices or ()))] for i, ex in enumerate(examples)]
    with attached_lm(model, edit) as view, torch.inference_mode():
        if share_prefix and view.config is not None:  # hook points: no KV cache to share the prefix with
            with tqdm(total=len(encoded), desc=str(style), unit="prompt", disable=not progress) as bar:
                sums = choice_logprobs(view, tok, encoded, batch_size, bar)
            return [[sums[e][k] for e, k in slots] for slots in where]
        with tqdm(total=len(examples), desc=str(style), unit="item", disable=not progress) as bar:
            return _choice_logprobs_packed(view, tok, examples, style, max_length, batch_size, bar)
