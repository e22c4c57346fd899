"""Instruction/answer examples: JSONL I/O with line-numbered errors, prompts, tokenized batches.

The released JoLA format is one JSON object a line with ``instruction`` and ``answer``
(and, for multiple-choice tasks here, optional ``choices``). Training supervises the
answer tokens only: everything up to and including ``### Response:\\n`` is masked.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import DataError
from .fileio import atomic_path

__all__ = [
    "ALPACA_TEMPLATE",
    "Batch",
    "Example",
    "PromptStyle",
    "answer_mask",
    "clip_prompt",
    "collate",
    "format_prompt",
    "model_tokenizer",
    "pad_sequences",
    "padding_id",
    "read_jsonl",
    "sample_examples",
    "tokenize_example",
    "write_jsonl",
]

logger = logging.getLogger(__name__)
_CUT_PROMPTS = 0  # prompts cut by clip_prompt in this process (the warning gives the running count)

# The paper's Alpaca "no-input" template (without the released code's stray space, B13).
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


class PromptStyle(StrEnum):
    """How an instruction becomes a prompt."""

    ALPACA = "alpaca"  # the paper's template, as in the released code
    CHAT = "chat"  # the model's own chat template
    CLOZE = "cloze"  # no template, no chat: the raw context, options scored as its continuation


@dataclass(frozen=True)
class Example:
    """One instruction with its reference answer (and answer options, if multiple choice).

    In the cloze rendering (``PromptStyle.CLOZE``) ``instruction`` is the raw context and each
    option is scored as the continuation ``" " + choice``. ``choice_contexts`` (WinoGrande):
    the options differ in the context instead; option k is scored as ``" " + instruction``
    after ``choice_contexts[k]`` (lm-eval's partial scoring).
    """

    instruction: str
    answer: str
    choices: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    choice_contexts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Check what JSONL records are checked for, so that the Python API fails the same way."""
        if self.choice_contexts is not None and (
            self.choices is None or len(self.choice_contexts) != len(self.choices)
        ):
            raise DataError("choice_contexts needs one context per choice; give 'choices' of the same length")
        # the Python API gets the same type checks as JSONL records
        if not isinstance(self.meta, dict):
            raise DataError(f"Example.meta must be a dict, got {type(self.meta).__name__}")
        refs = self.meta.get("references")
        if refs is not None and not _strings(refs):
            raise DataError(f"Example.meta['references'] must be a non-empty list of strings, got {refs!r:.80}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"instruction": self.instruction, "answer": self.answer}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.choice_contexts is not None:
            out["choice_contexts"] = list(self.choice_contexts)
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_json(cls, obj: Any, *, where: str = "record") -> Example:
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("instruction", "answer") if k not in obj]
        if missing:
            raise DataError(
                f"{where}: missing field(s) {missing}; each line needs "
                '{"instruction": "...", "answer": "..."} (optional "choices": [...])'
            )
        for key in ("instruction", "answer"):
            if not isinstance(obj[key], str) or (key == "answer" and not obj[key].strip()):
                raise DataError(f"{where}: field '{key}' must be a non-empty string, got {obj[key]!r}")
        choices = obj.get("choices")
        if choices is not None:
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices) or not choices:
                raise DataError(f"{where}: 'choices' must be a non-empty list of strings")
            if obj["answer"] not in choices:
                raise DataError(f"{where}: answer {obj['answer']!r} is not one of choices {choices}")
            choices = tuple(choices)
        contexts = obj.get("choice_contexts")
        if contexts is not None:
            if (
                not isinstance(contexts, list)
                or not all(isinstance(c, str) for c in contexts)
                or len(contexts) != len(choices or ())
            ):
                raise DataError(f"{where}: 'choice_contexts' must be a list of strings, one per choice")
            contexts = tuple(contexts)
        meta = obj.get("meta", {})
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise DataError(f"{where}: 'meta' must be a JSON object, got {type(meta).__name__}")
        refs = meta.get("references")
        if refs is not None and not (isinstance(refs, list) and _strings(refs)):
            raise DataError(f"{where}: 'meta.references' must be a non-empty list of strings, got {refs!r:.80}")
        return cls(
            instruction=obj["instruction"], answer=obj["answer"], choices=choices, meta=meta, choice_contexts=contexts
        )


def read_jsonl(path: str | Path) -> list[Example]:
    """Read examples from JSONL; a malformed line raises :class:`DataError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    examples = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{where}: not UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8"
                ) from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            examples.append(Example.from_json(obj, where=where))
    if not examples:
        raise DataError(f"{path}: the file holds no examples")
    return examples


def write_jsonl(examples: Iterable[Example], path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
    return path


def sample_examples(examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """``n`` examples drawn without replacement by a seeded RNG of their own (all if n is None)."""
    if n is None or n >= len(examples):
        return list(examples)
    return random.Random(seed).sample(list(examples), n)


def format_prompt(instruction: str, style: PromptStyle = PromptStyle.ALPACA, tokenizer: Any = None) -> str:
    style = PromptStyle(style)
    if style is PromptStyle.ALPACA:
        return ALPACA_TEMPLATE.format(instruction=instruction)
    if style is PromptStyle.CLOZE:
        return instruction
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise DataError("PromptStyle.CHAT needs a tokenizer with a chat template")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
    )


def tokenize_example(
    tokenizer: Any,
    example: Example,
    *,
    style: PromptStyle = PromptStyle.ALPACA,
    max_length: int = 400,
    answer: str | None = None,
    eos_id: int | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of prompt+answer and labels with the prompt masked to -100.

    The prompt is tokenized with the tokenizer's special tokens (BOS where it adds one; the
    chat style carries its own), the answer without. Over-long prompts lose their start, so
    the answer is always kept; a warning gives the count of dropped tokens. ``eos_id``: appended
    to the answer (and its labels), so that a
    model trained on it learns to stop after the answer.

    ``PromptStyle.CLOZE``: the ids are lm-evaluation-harness's (context, continuation) split of
    the gold option (``answer`` picks another option); see :func:`jolalens.cloze.encode_pair`.
    """
    if PromptStyle(style) is PromptStyle.CLOZE:
        from .cloze import cloze_pair, encode_pair

        prompt_ids, answer_ids = encode_pair(
            tokenizer, *cloze_pair(example, example.answer if answer is None else answer)
        )
    else:
        prompt = format_prompt(example.instruction, style, tokenizer)
        add_special = PromptStyle(style) is PromptStyle.ALPACA
        prompt_ids = tokenizer(prompt, add_special_tokens=add_special).input_ids
        answer_ids = tokenizer(example.answer if answer is None else answer, add_special_tokens=False).input_ids
    if not answer_ids:
        raise DataError(f"answer {example.answer!r} tokenizes to nothing")
    if eos_id is not None:
        answer_ids = [*answer_ids, eos_id]
    keep = max_length - len(answer_ids)
    if keep < 1:
        raise DataError(f"answer of {len(answer_ids)} tokens does not fit max_length={max_length}")
    prompt_ids = clip_prompt(prompt_ids, keep, max_length=max_length)
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def clip_prompt(prompt_ids: list[int], keep: int, *, max_length: int) -> list[int]:
    """The last ``keep`` prompt tokens; a cut is logged with the count of dropped tokens.

    Cutting the start keeps the answer position right but drops the template header, so it
    is never silent: the 1st, 10th, 100th ... cut in a process is a WARNING (with the running
    count), the others DEBUG, so a long data set does not flood the log.
    """
    global _CUT_PROMPTS
    if len(prompt_ids) > keep:
        _CUT_PROMPTS += 1
        # the 1st, 10th, 100th ... cut: counts without a flood
        first_of_order = _CUT_PROMPTS == 10 ** (len(str(_CUT_PROMPTS)) - 1)
        logger.log(
            logging.WARNING if first_of_order else logging.DEBUG,
            "prompt of %d tokens does not fit max_length=%d (room for %d): dropped its first "
            "%d tokens (the template header among them); %d prompt(s) cut in this process so "
            "far; raise max_length or shorten the instruction",
            len(prompt_ids),
            max_length,
            keep,
            len(prompt_ids) - keep,
            _CUT_PROMPTS,
        )
    return prompt_ids[-keep:]


def _strings(values: Any) -> bool:
    """A non-empty list (or tuple) of strings."""
    if not isinstance(values, list | tuple) or not values:
        return False
    return all(isinstance(v, str) for v in values)


@dataclass
class Batch:
    """A padded batch; ``position_ids`` make left and right padding give the same logits."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    labels: Int[Tensor, "batch pos"]
    position_ids: Int[Tensor, "batch pos"]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.position_ids)))

    @property
    def n_answer_tokens(self) -> int:
        return int((self.labels[:, 1:] != -100).sum())


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, padding_side: str = "right") -> Batch:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(ids) for ids, _ in rows)
    ids_t = torch.full((len(rows), width), pad_id, dtype=torch.long)
    lab_t = torch.full((len(rows), width), -100, dtype=torch.long)
    mask_t = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        span = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        ids_t[i, span] = torch.tensor(ids)
        lab_t[i, span] = torch.tensor(labels)
        mask_t[i, span] = 1
    pos_t = (mask_t.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids_t, mask_t, lab_t, pos_t)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right") -> Batch:
    """Token id lists (no answer) padded into a :class:`Batch` by :func:`collate`; every label is -100."""
    return collate([(list(s), [-100] * len(s)) for s in seqs], pad_id, padding_side)


def model_tokenizer(model: Any) -> Any:
    """The tokenizer :func:`jolalens.load_model` attached to ``model``; :class:`DataError` without one."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise DataError(f"{type(model).__name__} has no tokenizer; load it with jolalens.load_model")
    return tok


def padding_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token.

    Padded positions are masked out, so any id would do; a tokenizer with neither is refused
    rather than padded with an arbitrary real token.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("the tokenizer has neither a pad nor an eos token to pad with")
    return int(pad)


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]`` True where the input token predicts an answer token (the next label)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask
