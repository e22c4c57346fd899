"""Evaluate a model, with or without an edit attached, on a task's examples.

Three protocols, each a module of its own; this one dispatches and summarises:

* ``Protocol.LOGLIK`` ranks each multiple-choice item's answer options by the summed
  log-probability of their tokens after the prompt (:mod:`jolalens.scoring`: the prompt is run
  once per item, and a prefix shared by all prompts once in all, with the options scored from
  the KV cache).
* ``Protocol.CLOZE`` ranks the option *texts* after the raw context as lm-evaluation-harness
  does (``acc`` and ``acc_norm``); see :mod:`jolalens.cloze`.
* ``Protocol.GEN`` decodes as the paper does (beam 4 by default, 16 new tokens, 64 for
  NLG, left padding; :mod:`jolalens.generation`), keeps the first line and reads it with
  anchored extractors (:mod:`jolalens.extraction`). NLG outputs get corpus BLEU and ROUGE-L F
  (:mod:`jolalens.metrics`).

All forward passes run on :func:`jolalens.runners.attached_lm` (the HF view: SDPA, working KV cache).
The public names of those modules stay importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pandas as pd
from torch import nn

from .data import Example, PromptStyle
from .errors import DataError
from .extraction import extract_answer, first_line, labels_named
from .generation import generate_outputs
from .metrics import nlg_scores
from .scoring import check_choices, score_choices
from .tasks.registry import Metric, Task, get_task

__all__ = [
    "EvalResult",
    "Protocol",
    "evaluate",
    "extract_answer",
    "first_line",
    "labels_named",
    "nlg_scores",
    "score_choices",
]


class Protocol(StrEnum):
    """How predictions are made."""

    LOGLIK = "loglik"
    GEN = "gen"
    CLOZE = "cloze"  # lm-eval's multiple-choice scoring of option texts: see jolalens.cloze


@dataclass
class EvalResult:
    """Per-item results and the summary of one evaluation run."""

    items: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def summary_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.summary])


def evaluate(
    model: nn.Module,
    examples: Sequence[Example],
    task: Task | str,
    *,
    edit: Any = None,
    protocol: Protocol | str = Protocol.LOGLIK,
    batch_size: int = 16,
    num_beams: int = 4,
    max_new_tokens: int | None = None,
    style: PromptStyle = PromptStyle.ALPACA,
    max_length: int = 400,
    progress: bool = True,
) -> EvalResult:
    """Score ``examples`` of ``task`` on ``model`` (with ``edit`` attached if given).

    Returns per-item rows (prediction, correctness or BLEU/ROUGE-L) and a summary with the
    task metric, item count and timing. Zero-shot evaluation is simply ``edit=None``.
    """
    task = get_task(task)
    protocol = Protocol(protocol)
    if not examples:
        raise DataError("evaluate() got no examples")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = [
        {"item": i, "instruction": ex.instruction, "answer": ex.answer} for i, ex in enumerate(examples)
    ]
    summary: dict[str, Any] = {
        "task": task.name,
        "protocol": protocol.value,
        "n": len(examples),
        "edit": getattr(edit, "method", None) if edit is not None else "none",
    }
    if protocol is Protocol.CLOZE:
        from .cloze import cloze_rows, score_cloze

        if task.metric is not Metric.ACCURACY:
            raise DataError(f"task {task.name} is a generation task; evaluate it with protocol='gen'")
        check_choices(examples)
        scores = score_cloze(
            model, examples, edit=edit, batch_size=batch_size, max_length=max_length, progress=progress
        )
        cloze_items, cloze_summary = cloze_rows(examples, scores)
        for row, extra in zip(rows, cloze_items, strict=True):
            row.update(extra)
        summary.update(cloze_summary)
    elif protocol is Protocol.LOGLIK:
        if task.metric is not Metric.ACCURACY:
            raise DataError(f"task {task.name} is a generation task; evaluate it with protocol='gen'")
        scores = score_choices(
            model, examples, edit=edit, style=style, batch_size=batch_size, max_length=max_length, progress=progress
        )
        for row, ex, s in zip(rows, examples, scores, strict=True):
            assert ex.choices is not None
            best = max(range(len(s)), key=lambda k: s[k])
            row.update(
                choices=list(ex.choices), logprobs=s, prediction=ex.choices[best], correct=ex.choices[best] == ex.answer
            )
    else:
        n_new = max_new_tokens if max_new_tokens is not None else task.max_new_tokens
        outputs = generate_outputs(
            model,
            examples,
            edit=edit,
            style=style,
            batch_size=batch_size,
            num_beams=num_beams,
            max_new_tokens=n_new,
            max_length=max_length,
            progress=progress,
        )
        for row, ex, out in zip(rows, examples, outputs, strict=True):
            pred = extract_answer(out, task, ex.choices)
            row.update(output=out, prediction=pred)
            if task.metric is Metric.ACCURACY:
                row["correct"] = pred is not None and pred == ex.answer
        summary.update(num_beams=num_beams, max_new_tokens=n_new)
    if protocol is Protocol.CLOZE:
        pass  # acc, acc_norm and their intervals came from the cloze scorer above
    elif task.metric is Metric.ACCURACY:
        summary["accuracy"] = sum(r["correct"] for r in rows) / len(rows)
        if protocol is Protocol.GEN:
            summary["unparsed"] = sum(r["prediction"] is None for r in rows) / len(rows)
    else:
        refs = [ex.meta.get("references") or [ex.answer] for ex in examples]
        corpus, sent, rouge = nlg_scores([r["prediction"] or "" for r in rows], refs)
        for row, b, rl in zip(rows, sent, rouge, strict=True):
            row.update(bleu=b, rougeL=rl)
        summary.update(bleu=corpus, rougeL=sum(rouge) / len(rouge))
    seconds = time.perf_counter() - t0
    summary.update(seconds=seconds, items_per_s=len(examples) / seconds if seconds > 0 else float("inf"))
    return EvalResult(pd.DataFrame(rows), summary)
