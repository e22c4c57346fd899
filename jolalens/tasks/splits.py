"""The paper's data protocol: 200 train and 200 valid examples drawn with a seed, and a test set.

Train and valid are drawn from the cached pools with the user's seed; valid comes from the
official validation split where the task has one distinct from test, otherwise it is carved
from the train pool, disjoint from the train sample (a pool smaller than n_train + n_valid is
shared between them in proportion). Test is the full split, or a fixed
seeded subset of ``n_test`` (``test_seed``, independent of the training seed, so runs with
different seeds are scored on the same items).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..data import Example, read_jsonl, sample_examples
from ..errors import DataError
from .registry import Carrier, Extraction, Family, Metric, Task, get_task
from .sources import ensure_task_data

__all__ = ["TaskSplits", "custom_task", "load_jsonl_splits", "load_task_splits"]


@dataclass(frozen=True)
class TaskSplits:
    """Train / valid / test examples of one task."""

    train: list[Example]
    valid: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def _check_n(name: str, n: int | None) -> None:
    if n is not None and (not isinstance(n, int) or n < 0):
        raise DataError(f"{name} must be a non-negative integer or None (all), got {n!r}")


def _subset_in_order(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def load_task_splits(
    name: str | Task,
    n_train: int | None = 200,
    n_valid: int | None = 200,
    n_test: int | None = None,
    seed: int = 42,
    *,
    test_seed: int = 0,
    download: bool = True,
    protocol: str | None = None,
) -> TaskSplits:
    """Seeded train/valid samples and the test split of a registered task (None = all).

    ``protocol="cloze"``: the same items (same seeds, same draws) in lm-eval's cloze
    rendering (:mod:`jolalens.tasks.cloze_data`); any other value: the paper's label format.
    """
    for label, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        _check_n(label, n)
    task = get_task(name)
    if protocol is not None and str(protocol) == "cloze":
        from .cloze_data import ensure_cloze_data

        root = ensure_cloze_data(task, download=download)
    else:
        root = ensure_task_data(task, download=download)
    pool = read_jsonl(root / "train.jsonl")
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    k = len(pool) if n_train is None else min(n_train, len(pool))
    carve = not (root / "valid.jsonl").is_file()
    if carve and n_train is not None and n_valid is not None and len(pool) < n_train + n_valid:
        k = round(len(pool) * n_train / (n_train + n_valid))  # small pool: share it in proportion
    train = [pool[i] for i in order[:k]]
    if not carve:
        valid = sample_examples(read_jsonl(root / "valid.jsonl"), n_valid, seed)
    else:
        rest = [pool[i] for i in order[k:]]
        valid = rest if n_valid is None else rest[:n_valid]
    test = _subset_in_order(read_jsonl(root / "test.jsonl"), n_test, test_seed)
    return TaskSplits(train, valid, test)


def custom_task(examples: list[Example], name: str = "custom") -> Task:
    """A task for your own JSONL data: multiple choice (accuracy) when every example has
    ``choices``, otherwise generation scored with BLEU / ROUGE-L."""
    if not examples:
        raise DataError("custom_task needs at least one example")
    with_choices = [ex.choices is not None for ex in examples]
    if any(with_choices) and not all(with_choices):
        raise DataError(
            f"{sum(with_choices)} of {len(examples)} examples have 'choices': give every example "
            "choices (multiple choice) or none (generation)"
        )
    carrier = Carrier(package="(user data)", version="-", archive="", size_mb=0)
    if all(with_choices):
        labels = tuple(dict.fromkeys(c for ex in examples for c in ex.choices or ()))
        return Task(name, Family.COMMONSENSE, carrier, name, "user-supplied", Extraction.LABEL, Metric.ACCURACY, labels)
    return Task(name, Family.NLG, carrier, name, "user-supplied", Extraction.TEXT, Metric.BLEU_ROUGE, max_new_tokens=64)


def load_jsonl_splits(
    train: str | Path | None = None,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    *,
    n_train: int | None = 200,
    n_valid: int | None = 200,
    seed: int = 42,
) -> TaskSplits:
    """Your own JSONL files (``instruction``, ``answer``, optional ``choices``), validated
    with file:line errors; train/valid are sampled like the registry tasks."""
    read = lambda p: read_jsonl(p) if p is not None else []  # noqa: E731
    return TaskSplits(
        sample_examples(read(train), n_train, seed),
        sample_examples(read(valid), n_valid, seed),
        read(test),
    )
