"""The cloze protocol: each option's text ranked by its log-probability after the raw context.

This is how lm-evaluation-harness (0.4.x) scores multiple-choice tasks: no template, no chat,
option ``k`` is the continuation ``" " + choice_k`` (the default ``target_delimiter``) of the
item's context, or, for WinoGrande, the shared continuation after the option's own context.
Token ids follow ``HFLM``: the context is encoded with the tokenizer's default special
tokens (a BOS only where the tokenizer adds one), the continuation is what encoding
``context + continuation`` adds after the context's ids, and trailing spaces of the context
move to the continuation.

``acc`` takes the option with the largest summed log-probability; ``acc_norm`` divides it by
the option's length in *characters* (``len(str)``, not bytes), exactly as lm-eval 0.4.13's
``process_results`` does with ``doc_to_choice``: the option text, or for WinoGrande (where
lm-eval's choices are the filled-in contexts) the option's context.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from .data import Example, PromptStyle
from .errors import DataError
from .scoring import score_choices

__all__ = [
    "TARGET_DELIMITER",
    "cloze_pair",
    "cloze_pairs",
    "cloze_rows",
    "encode_pair",
    "encoded_entries",
    "option_lengths",
    "score_cloze",
    "wilson_interval",
]

logger = logging.getLogger(__name__)

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter, used by every task here


def cloze_pair(example: Example, option: str) -> tuple[str, str]:
    """The (context, continuation) strings that score ``option`` of ``example``."""
    if example.choices is None or option not in example.choices:
        raise DataError(f"{option!r} is not one of the example's choices {example.choices}")
    if example.choice_contexts is None:
        return example.instruction, TARGET_DELIMITER + option
    return example.choice_contexts[example.choices.index(option)], TARGET_DELIMITER + example.instruction


def cloze_pairs(example: Example) -> list[tuple[str, str]]:
    """One (context, continuation) pair per option, in the order of ``choices``."""
    if not example.choices:
        raise DataError("cloze scoring needs answer options; this example has no 'choices'")
    return [cloze_pair(example, c) for c in example.choices]


def option_lengths(example: Example) -> list[int]:
    """The lengths (characters) that ``acc_norm`` divides by: lm-eval's ``len(choice)``."""
    assert example.choices is not None
    texts = example.choice_contexts if example.choice_contexts is not None else example.choices
    return [len(t) for t in texts]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids exactly as lm-eval's ``HFLM._encode_pair`` makes them."""
    if not context:  # lm-eval conditions on the prefix token (BOS, else EOS)
        cont = tokenizer(continuation, add_special_tokens=False).input_ids
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation).input_ids
    ctx = tokenizer(context).input_ids
    cont = whole[len(ctx) :]
    if not cont:
        raise DataError(f"the continuation {continuation!r} tokenizes to nothing after {context[-40:]!r}")
    return ctx, cont


def encoded_entries(
    tokenizer: Any, examples: Sequence[Example], max_length: int
) -> tuple[list[tuple[list[int], list[list[int]]]], list[list[tuple[int, int]]]]:
    """One entry (context ids, option ids...) per distinct context, and where each option went.

    Options that share their item's context share one entry (its context is run once); the
    contexts are cut from the left so that context + longest option fit ``max_length`` (lm-eval
    cuts the joined sequence the same way).
    """
    entries: list[tuple[list[int], list[list[int]]]] = []
    where: list[list[tuple[int, int]]] = []
    for ex in examples:
        slots = []
        by_context: dict[str, int] = {}
        for context, continuation in cloze_pairs(ex):
            ctx_ids, cont_ids = encode_pair(tokenizer, context, continuation)
            key = repr(ctx_ids)
            if key not in by_context:
                by_context[key] = len(entries)
                entries.append((ctx_ids, []))
            entry = entries[by_context[key]]
            entry[1].append(cont_ids)
            slots.append((by_context[key], len(entry[1]) - 1))
        where.append(slots)
    trimmed = []
    for ctx_ids, conts in entries:
        keep = max_length - max(len(c) for c in conts)
        if keep < 1:
            raise DataError(f"an option of {max(len(c) for c in conts)} tokens does not fit max_length={max_length}")
        trimmed.append((ctx_ids[-keep:], conts))
    return trimmed, where


def score_cloze(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    edit: Any = None,
    batch_size: int = 16,
    max_length: int = 2048,
    progress: bool = True,
) -> list[list[float]]:
    """Summed log-probability of each option's continuation (one list per example).

    :func:`jolalens.scoring.score_choices` with ``style=PromptStyle.CLOZE``: each distinct
    context runs once with its options as a token tree (or from its KV cache); edits that must
    see each prompt whole (LoReFT) get one packed row per option.
    """
    return score_choices(
        model,
        examples,
        edit=edit,
        style=PromptStyle.CLOZE,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a binomial proportion."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def cloze_rows(
    examples: Sequence[Example], scores: Sequence[Sequence[float]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-item columns and the summary (acc, acc_norm, Wilson 95% intervals) of cloze scores."""
    rows: list[dict[str, Any]] = []
    for ex, lls in zip(examples, scores, strict=True):
        assert ex.choices is not None
        lengths = option_lengths(ex)
        best = max(range(len(lls)), key=lambda k: lls[k])  # first maximum, as np.argmax
        best_norm = max(range(len(lls)), key=lambda k: lls[k] / lengths[k])
        rows.append(
            {
                "choices": list(ex.choices),
                "logprobs": list(lls),
                "option_lengths": lengths,
                "prediction": ex.choices[best],
                "prediction_norm": ex.choices[best_norm],
                "correct": ex.choices[best] == ex.answer,
                "correct_norm": ex.choices[best_norm] == ex.answer,
            }
        )
    n = len(rows)
    hits, hits_norm = sum(r["correct"] for r in rows), sum(r["correct_norm"] for r in rows)
    summary = {
        "accuracy": hits / n,
        "acc_norm": hits_norm / n,
        "accuracy_ci95": wilson_interval(hits, n),
        "acc_norm_ci95": wilson_interval(hits_norm, n),
        "interval": "wilson",
    }
    return rows, summary
