"""The token rows a head-scoring run reads: one per example, or one per choice of an MC example."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from ..data import Batch, Example, PromptStyle, collate, padding_id, tokenize_example
from ..errors import DataError

__all__ = ["ScoringChunk", "ScoringData", "resolve_scoring_data"]


@dataclass(frozen=True)
class ScoringData:
    """Right-padded token rows to score: one row per example, or one per choice of an MC example.

    ``labels`` are -100 on the prompt and on padding. ``example_index[r]`` is the example of row
    ``r``; ``is_gold[r]`` marks the row holding the reference answer (one per example).
    """

    input_ids: Int[Tensor, "rows pos"]
    labels: Int[Tensor, "rows pos"]
    attention_mask: Int[Tensor, "rows pos"]
    example_index: Int[Tensor, " rows"]
    is_gold: Bool[Tensor, " rows"]
    has_choices: Bool[Tensor, " examples"]

    def __post_init__(self) -> None:
        rows, _ = self.input_ids.shape
        if self.labels.shape != self.input_ids.shape or self.attention_mask.shape != self.input_ids.shape:
            raise DataError("ScoringData: input_ids, labels and attention_mask must share one shape")
        if self.example_index.shape != (rows,) or self.is_gold.shape != (rows,):
            raise DataError("ScoringData: example_index and is_gold need one entry per row")
        n = self.n_examples
        if n == 0:
            raise DataError("ScoringData holds no examples")
        gold_per_example = torch.zeros(n, dtype=torch.long).index_add_(0, self.example_index, self.is_gold.long())
        if not bool((gold_per_example == 1).all()):
            raise DataError("ScoringData: every example needs exactly one gold row")
        if bool(((self.labels[:, 1:] != -100).sum(1) == 0).any()):
            raise DataError("ScoringData: a row has no answer tokens (labels are all -100)")
        if bool((self.labels[:, 0] != -100).any()):
            raise DataError("ScoringData: position 0 cannot be an answer token (nothing predicts it)")

    @property
    def n_examples(self) -> int:
        return int(self.has_choices.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    def from_examples(
        cls,
        tokenizer: Any,
        examples: Sequence[Example],
        *,
        style: PromptStyle = PromptStyle.ALPACA,
        max_length: int = 400,
    ) -> ScoringData:
        """Tokenize examples as in training; an MC example gives one row per choice."""
        if not examples:
            raise DataError("no examples to score")
        pad_id = padding_id(tokenizer)
        rows: list[tuple[list[int], list[int]]] = []
        ex_idx: list[int] = []
        gold: list[bool] = []
        has_choices: list[bool] = []
        for i, ex in enumerate(examples):
            answers = list(ex.choices) if ex.choices else [ex.answer]
            has_choices.append(bool(ex.choices) and len(answers) > 1)
            for ans in answers:
                rows.append(tokenize_example(tokenizer, ex, style=style, max_length=max_length, answer=ans))
                ex_idx.append(i)
                gold.append(ans == ex.answer)
        batch = collate(rows, pad_id, "right")
        return cls(
            batch.input_ids,
            batch.labels,
            batch.attention_mask,
            torch.tensor(ex_idx, dtype=torch.long),
            torch.tensor(gold, dtype=torch.bool),
            torch.tensor(has_choices, dtype=torch.bool),
        )

    @classmethod
    def from_batch(cls, batch: Batch) -> ScoringData:
        """One row per example from a right-padded :class:`jolalens.data.Batch` (no choices)."""
        mask = batch.attention_mask
        if bool((mask[:, 0] == 0).any()):
            raise DataError("ScoringData.from_batch needs a right-padded batch (collate(padding_side='right'))")
        n = batch.input_ids.shape[0]
        return cls(
            batch.input_ids.long(),
            batch.labels.long(),
            mask.long(),
            torch.arange(n),
            torch.ones(n, dtype=torch.bool),
            torch.zeros(n, dtype=torch.bool),
        )

    def gold_only(self) -> ScoringData:
        """Each example's gold row alone, as an example without choices (trimmed of padding).

        The rows and their log-probs are the same as in ``self``; only what needs the other
        choices (accuracy) is lost. Scoring log-probs this way runs one row per example instead
        of one per choice.
        """
        if bool(self.is_gold.all()) and not bool(self.has_choices.any()):
            return self
        rows = self.gold_rows()
        width = int(self.attention_mask[rows].sum(1).max())
        n = self.n_examples
        return ScoringData(
            self.input_ids[rows, :width],
            self.labels[rows, :width],
            self.attention_mask[rows, :width],
            torch.arange(n),
            torch.ones(n, dtype=torch.bool),
            torch.zeros(n, dtype=torch.bool),
        )

    def by_length(self) -> tuple[ScoringData, Int[Tensor, " examples"]]:
        """The examples sorted by their longest row (stable), and ``order``: new ``i`` is old ``order[i]``.

        Consecutive examples then have similar lengths, so :meth:`chunks` pads little. Per-example
        scores do not depend on which examples share a chunk (right padding, causal attention).
        """
        lengths = torch.zeros(self.n_examples, dtype=torch.long).scatter_reduce_(
            0, self.example_index, self.attention_mask.sum(1).long(), reduce="amax"
        )
        order = torch.argsort(lengths, stable=True)
        return self.select(order), order

    def select(self, examples: Int[Tensor, " k"]) -> ScoringData:
        """The examples ``examples`` (distinct indices, in that order) with all their rows, renumbered."""
        new_index = torch.full((self.n_examples,), -1, dtype=torch.long)
        new_index[examples] = torch.arange(len(examples))
        row_example = new_index[self.example_index]
        rows = (row_example >= 0).nonzero().squeeze(-1)
        rows = rows[torch.argsort(row_example[rows], stable=True)]
        width = int(self.attention_mask[rows].sum(1).max())
        return ScoringData(
            self.input_ids[rows, :width],
            self.labels[rows, :width],
            self.attention_mask[rows, :width],
            row_example[rows],
            self.is_gold[rows],
            self.has_choices[examples],
        )

    def gold_rows(self) -> Int[Tensor, " examples"]:
        """The index of each example's gold row, in example order."""
        gold_row = torch.empty(self.n_examples, dtype=torch.long)
        gold_row[self.example_index[self.is_gold]] = self.is_gold.nonzero().squeeze(-1)
        return gold_row

    def fingerprint(self) -> str:
        """A hash of the token rows, labels and choice structure (the cache key's data part)."""
        h = hashlib.sha256()
        for t in (
            self.input_ids,
            self.labels,
            self.attention_mask,
            self.example_index,
            self.is_gold,
            self.has_choices,
        ):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def chunks(self, examples_per_chunk: int) -> Iterator[ScoringChunk]:
        """Consecutive groups of whole examples (all their choice rows), trimmed of padding."""
        n = self.n_examples
        for start in range(0, n, examples_per_chunk):
            stop = min(n, start + examples_per_chunk)
            rows = ((self.example_index >= start) & (self.example_index < stop)).nonzero().squeeze(-1)
            width = int(self.attention_mask[rows].sum(1).max())
            yield ScoringChunk(
                input_ids=self.input_ids[rows, :width],
                labels=self.labels[rows, :width],
                attention_mask=self.attention_mask[rows, :width],
                example_index=self.example_index[rows] - start,
                is_gold=self.is_gold[rows],
                has_choices=self.has_choices[start:stop],
                global_rows=rows,
            )


@dataclass(frozen=True)
class ScoringChunk:
    """A slice of whole examples of a :class:`ScoringData`, trimmed of padding, on one device."""

    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor
    example_index: Tensor
    is_gold: Tensor
    has_choices: Tensor
    global_rows: Tensor

    @property
    def n_examples(self) -> int:
        return int(self.has_choices.shape[0])

    @property
    def first_predicting_position(self) -> int:
        """The earliest position whose logits predict an answer token (earlier ones are unused)."""
        answer = (self.labels != -100).float().argmax(1)
        return int(answer.min()) - 1

    def to(self, device: torch.device) -> ScoringChunk:
        return ScoringChunk(
            *(
                t.to(device)
                for t in (
                    self.input_ids,
                    self.labels,
                    self.attention_mask,
                    self.example_index,
                    self.is_gold,
                    self.has_choices,
                    self.global_rows,
                )
            )
        )


def resolve_scoring_data(
    model: nn.Module,
    data: ScoringData | Sequence[Example],
    reference: ScoringData | Sequence[Example] | None,
    style: PromptStyle,
    max_length: int,
) -> tuple[ScoringData, ScoringData]:
    """``data`` and ``reference`` (default: ``data``) as ScoringData (the model's tokenizer)."""

    def prep(d: ScoringData | Sequence[Example]) -> ScoringData:
        if isinstance(d, ScoringData):
            return d
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise DataError("the model has no tokenizer; pass ScoringData built with your tokenizer")
        return ScoringData.from_examples(tokenizer, list(d), style=style, max_length=max_length)

    scored = prep(data)
    return scored, (scored if reference is None else prep(reference))
