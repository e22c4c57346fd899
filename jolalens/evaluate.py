"""Evaluate a model, with or without an edit attached, on a task's examples.

Three protocols:

* ``Protocol.LOGLIK`` ranks each multiple-choice item's answer options by the summed
  log-probability of their tokens after the prompt: no dependence on output format, and
  fast, because the prompt is run once per item (and a prefix shared by all prompts, such
  as the Alpaca header, once in all) with the options scored from the KV cache.
* ``Protocol.CLOZE`` ranks the option *texts* after the raw context as lm-evaluation-harness
  does (``acc`` and ``acc_norm``); see :mod:`jolalens.cloze`.
* ``Protocol.GEN`` decodes as the paper does (beam 4 by default, 16 new tokens, 64 for
  NLG, left padding), keeps the first line and reads it with anchored extractors that
  avoid the released code's bugs (B6: "Based on..." is not answer B; BoolQ is
  case-insensitive). NLG outputs get corpus BLEU (sacrebleu) and ROUGE-L F (rouge-score).

All forward passes run on :func:`jolalens.hf_view.hf_view` (SDPA, working KV cache).
"""

from __future__ import annotations

import copy
import inspect
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import (
    Example,
    PromptStyle,
    answer_mask,
    clip_prompt,
    collate,
    format_prompt,
    tokenize_example,
)
from .edit import answer_positions
from .errors import DataError
from .hf_view import hf_view
from .tasks.registry import Extraction, Metric, Task, get_task

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


# ---- extraction ------------------------------------------------------------------------------


def first_line(text: str) -> str:
    """The first non-empty line of a continuation, stripped (the paper keeps the first line)."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _join_spaced_labels(labels: Sequence[str], line: str) -> str:
    """``line`` with every word-and-number label written with a space ("option 2") joined up."""
    for lab in labels:
        m = re.fullmatch(r"([A-Za-z]+)(\d+)", lab)
        if m:
            line = re.sub(rf"\b{m.group(1)}\s+{m.group(2)}\b", lab, line, flags=re.IGNORECASE)
    return line


def _labels_named(labels: Sequence[str], line: str, spaced: bool = False) -> set[str]:
    """The labels (lower case) that ``line`` names as whole words.

    A word made of labels run together counts: an edit trained without EOS repeats its answer
    ("solution2solution2…", cut short at the token limit as "…solutio"), while "answer12" or
    "untrue" name no label. ``spaced``: "option 2" also names ``option2``.
    """
    if spaced:
        line = _join_spaced_labels(labels, line)
    alternatives = "|".join(re.escape(lab) for lab in sorted(labels, key=len, reverse=True))
    one, run = re.compile(alternatives, re.IGNORECASE), re.compile(rf"(?:{alternatives})+", re.IGNORECASE)
    words = re.findall(r"[A-Za-z0-9_]+", line)
    cut_short = bool(line) and line[-1].isalnum()
    found: set[str] = set()
    for i, word in enumerate(words):
        m = run.match(word)
        if not m:
            continue
        rest = word[m.end() :].lower()
        if rest and not (cut_short and i == len(words) - 1 and any(lab.lower().startswith(rest) for lab in labels)):
            continue
        found |= {x.lower() for x in one.findall(m.group(0))}
    return found


def _letter_patterns(letters: str) -> list[re.Pattern[str]]:
    cls = f"[{letters}]"
    return [
        # "B", "B.", "B)", "(B)", "B: ..." at the start; "Based on" and "A cat" are not letters
        re.compile(rf"^\s*(?:\(({cls})\)|({cls})(?:[.):,](?:\s|$)|\s*$))"),
        re.compile(rf"(?i:answer\s+is|answer\s*:)\s*\(?({cls})(?![A-Za-z0-9])"),
    ]


def labels_named(
    text: str, task: Task | str, choices: Sequence[str] | None = None, *, spaced_labels: bool = False
) -> set[str]:
    """The labels (lower case) that a generated first line names, to tell an output that lists the
    options (two or more) from one that answers in words (none). Empty for letter and text tasks."""
    task = get_task(task)
    line = first_line(text)
    if task.extraction is Extraction.BOOL:
        return _labels_named(("true", "false"), line)
    if task.extraction is Extraction.LABEL:
        return _labels_named(list(choices or task.labels), line, spaced=spaced_labels)
    return set()


def extract_answer(
    text: str, task: Task | str, choices: Sequence[str] | None = None, *, spaced_labels: bool = False
) -> str | None:
    """The prediction in a generated first line, or None when it holds no valid answer.

    LABEL: the label the line names as a whole word (``answer2`` but not ``answer21``; a run of
    one label such as ``answer2answer2`` gives it), case-insensitive; a line that names two
    different labels ("answer1/answer2/answer3", "true or false", "truefalsefalse") lists the
    options rather than choosing one, so it holds no answer. BOOL: the same for true/false.
    LETTER: a letter alone at the start or after "answer is"/"answer:". TEXT: the line itself.

    ``spaced_labels``: also read a label written with a space before its number ("The answer is
    option 2."). The paper's extractor (LLM-Adapters') does not, and neither does the default
    here, which is the protocol; the lenient reading measures how much that choice costs.
    """
    task = get_task(task)
    line = first_line(text)
    if task.extraction is Extraction.TEXT:
        return line
    labels = list(choices or task.labels)
    if task.extraction is Extraction.LETTER:
        for pattern in _letter_patterns("".join(labels)):
            m = pattern.search(line)
            if m:
                return next(g for g in m.groups() if g)
        return None
    named = labels_named(line, task, choices, spaced_labels=spaced_labels)
    if len(named) != 1:
        return None  # no label, or several: a list of the options is not a choice
    found = named.pop()
    return found if task.extraction is Extraction.BOOL else next(lab for lab in labels if lab.lower() == found)


# ---- metrics ---------------------------------------------------------------------------------


def nlg_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[float, list[float], list[float]]:
    """Corpus BLEU (sacrebleu, 0-100), per-item sentence BLEU and ROUGE-L F (0-100, best reference)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    width = max((len(r) for r in references), default=1)
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(width)]
    corpus = sacrebleu.corpus_bleu(list(predictions), streams).score if predictions else 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [
        100 * scorer.score_multi(list(refs), pred)["rougeL"].fmeasure
        for pred, refs in zip(predictions, references, strict=True)
    ]
    sent = [sacrebleu.sentence_bleu(pred, list(refs)).score for pred, refs in zip(predictions, references, strict=True)]
    return corpus, sent, rouge


# ---- model plumbing --------------------------------------------------------------------------


@contextmanager
def _runner(model: nn.Module, edit: Any) -> Iterator[Any]:
    """The HF view where the model has one; else hook points behind the same calls."""
    from .edit import Backend
    from .hook_lm import HookPointLM
    from .runners import runner_for

    runner = runner_for(model)
    with runner.attached(edit):
        yield hf_view(model) if runner.backend is Backend.HF_VIEW else HookPointLM(runner)


def _tokenizer(model: nn.Module) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise DataError(f"{type(model).__name__} has no tokenizer; load it with jolalens.load_model")
    return tok


def _pad_id(tok: Any) -> int:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad if pad is not None else 0)


def _encode(tok: Any, ex: Example, style: PromptStyle, max_length: int) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and each choice's ids, cut exactly as :func:`tokenize_example` would."""
    assert ex.choices is not None
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


def _check_mc(examples: Sequence[Example]) -> None:
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
    pad = _pad_id(tok)
    device = next(view.parameters()).device
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad, "right").to(device)
        with answer_positions(answer_mask(batch.labels)):
            logits = view(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
            ).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = batch.labels[:, 1:]
        mask = target != -100
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        for r, total in enumerate(picked.sum(-1).tolist()):
            sums[owners[start + r]].append(total)
        bar.update(len({owners[start + r] for r in range(len(batch.input_ids))}))
    return sums


def _cache_kw(view: nn.Module) -> str:
    """``cache`` in recent transformers (``past_key_values`` is deprecated there), else the old name."""
    return "cache" if "cache" in inspect.signature(view.forward).parameters else "past_key_values"


def _common_prefix(seqs: Sequence[list[int]]) -> int:
    n = min(len(s) for s in seqs) - 1  # every row keeps at least one token of its own
    first = seqs[0]
    for k in range(max(n, 0)):
        tok_id = first[k]
        if any(s[k] != tok_id for s in seqs):
            return k
    return max(n, 0)


def _choice_logprobs_cached(
    view: nn.Module,
    tok: Any,
    examples: Sequence[Example],
    style: PromptStyle,
    max_length: int,
    batch_size: int,
    bar: Any,
) -> list[list[float]]:
    """Fast path: shared prefix once, each prompt once, choices from the KV cache."""
    return _cached_logprobs(view, tok, [_encode(tok, ex, style, max_length) for ex in examples], batch_size, bar)


def _cached_logprobs(
    view: nn.Module, tok: Any, encoded: Sequence[tuple[list[int], list[list[int]]]], batch_size: int, bar: Any
) -> list[list[float]]:
    """Summed log-probs of each entry's choice ids after its prompt ids (KV-cache sharing)."""
    from transformers import DynamicCache

    device = next(view.parameters()).device
    pad = _pad_id(tok)
    n_prefix = _common_prefix([p for p, _ in encoded])
    prefix_cache = None
    if n_prefix:
        prefix_cache = DynamicCache(config=view.config)
        with answer_positions(torch.zeros((1, n_prefix), dtype=torch.bool, device=device)):
            view(
                input_ids=torch.tensor([encoded[0][0][:n_prefix]], device=device),
                **{_cache_kw(view): prefix_cache},
                use_cache=True,
                logits_to_keep=1,
            )
    sums: list[list[float]] = [[] for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        suffixes = [encoded[i][0][n_prefix:] for i in idx]
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, s in enumerate(suffixes):  # left padding: every prompt ends at the last column
            ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, width - len(s) :] = 1
        pos = n_prefix + (mask.cumsum(-1) - 1).clamp(min=0)
        full_mask = torch.cat([torch.ones((len(idx), n_prefix), dtype=torch.long), mask], dim=1)
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(idx))
        else:
            cache = DynamicCache(config=view.config)
        last_prompt_token = torch.zeros((len(idx), width), dtype=torch.bool, device=device)
        last_prompt_token[:, -1] = True  # the only position here that predicts an answer token
        with answer_positions(last_prompt_token):
            out = view(
                input_ids=ids.to(device),
                attention_mask=full_mask.to(device),
                position_ids=pos.to(device),
                **{_cache_kw(view): cache},
                use_cache=True,
                logits_to_keep=1,
            )
        first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        # one row per (item, choice) for the choice tokens after the first
        rows = [(r, c_ids) for r, i in enumerate(idx) for c_ids in encoded[i][1]]
        totals = [float(first_logp[r, c_ids[0]]) for r, c_ids in rows]
        longer = [k for k, (_, c_ids) in enumerate(rows) if len(c_ids) > 1]
        if longer:
            cont_w = max(len(rows[k][1]) - 1 for k in longer)
            c_ids_t = torch.full((len(longer), cont_w), pad, dtype=torch.long)
            c_mask = torch.zeros((len(longer), cont_w), dtype=torch.long)
            for j, k in enumerate(longer):
                toks = rows[k][1][:-1]
                c_ids_t[j, : len(toks)] = torch.tensor(toks)
                c_mask[j, : len(toks)] = 1
            owner = torch.tensor([rows[k][0] for k in longer])
            cache.batch_select_indices(owner.to(device))
            c_pos = pos[owner, -1:] + 1 + torch.arange(cont_w)
            c_full = torch.cat([full_mask[owner], c_mask], dim=1)
            with answer_positions(c_mask.bool().to(device)):
                logits = view(
                    input_ids=c_ids_t.to(device),
                    attention_mask=c_full.to(device),
                    position_ids=c_pos.to(device),
                    **{_cache_kw(view): cache},
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

    ``share_prefix=False`` scores one packed prompt+choice row per option instead: slower,
    kept as an independent reference for the cached path.
    """
    _check_mc(examples)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = _tokenizer(model)
    if getattr(edit, "edits_prompt_positions", False):
        share_prefix = False  # a shared-prefix cache would split the prompt LoReFT must see whole
    fn = _choice_logprobs_cached if share_prefix else _choice_logprobs_packed
    with (
        _runner(model, edit) as view,
        torch.inference_mode(),
        tqdm(total=len(examples), desc="loglik", unit="item", disable=not progress) as bar,
    ):
        if view.config is None:  # hook points: no KV cache to share the prefix with
            fn = _choice_logprobs_packed
        return fn(view, tok, examples, PromptStyle(style), max_length, batch_size, bar)


def _generate(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    edit: Any,
    style: PromptStyle,
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
    max_length: int,
    progress: bool,
) -> list[str]:
    tok = _tokenizer(model)
    pad = _pad_id(tok)
    add_special = PromptStyle(style) is PromptStyle.ALPACA
    encoded = [
        tok(format_prompt(ex.instruction, style, tok), add_special_tokens=add_special).input_ids for ex in examples
    ]
    prompts = [clip_prompt(ids, max_length, max_length=max_length) for ids in encoded]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(examples)
    eos = tok.eos_token_id
    with (
        _runner(model, edit) as view,
        torch.inference_mode(),
        tqdm(total=len(examples), desc="generate", unit="item", disable=not progress) as bar,
    ):
        device = next(view.parameters()).device
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[r, width - len(prompts[i]) :] = 1
            out = view.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for r, i in enumerate(idx):
                outputs[i] = tok.decode(out[r, width:], skip_special_tokens=True)
            bar.update(len(idx))
    return outputs


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
        _check_mc(examples)
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
        outputs = _generate(
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
    if task.metric is Metric.ACCURACY and protocol is not Protocol.CLOZE:
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
