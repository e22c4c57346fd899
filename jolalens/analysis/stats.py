"""Paired significance tests and chance-level controls for comparing methods on the same items.

Exact tests are computed from binomial coefficients (no scipy needed); the unit tests check them
against ``scipy.stats``. Everything here is a pure function of counts or per-item arrays.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "BootstrapInterval",
    "label_prior_accuracy",
    "length_prior_accuracy",
    "majority_label_share",
    "mcnemar_exact_p",
    "paired_bootstrap",
    "paired_mcnemar_p",
    "sign_test_from_differences",
    "sign_test_p",
]


def sign_test_p(higher: int, lower: int) -> float:
    """Exact two-sided sign test: ``min(1, 2 * P(X <= min(higher, lower)))``, ``X ~ Bin(n, 1/2)``.

    ``n = higher + lower`` (ties are dropped before calling); ``p = 1`` when ``n = 0``.
    """
    if higher < 0 or lower < 0:
        raise ValueError(f"counts must be >= 0, got higher={higher}, lower={lower}")
    n = higher + lower
    if n == 0:
        return 1.0
    k = min(higher, lower)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar test on the discordant items.

    ``a_only`` items only A gets right, ``b_only`` only B: under H0 each discordant item is a
    fair coin, so ``p = min(1, 2 * P(X <= min(a_only, b_only)))`` with
    ``X ~ Bin(a_only + b_only, 1/2)``, the sign test on the discordant pairs.
    """
    return sign_test_p(a_only, b_only)


def paired_mcnemar_p(correct_a: ArrayLike, correct_b: ArrayLike) -> float:
    """Exact McNemar p of two methods' per-item correctness (same items, same order)."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"per-item results differ in length: {a.shape} vs {b.shape}")
    return mcnemar_exact_p(int((a & ~b).sum()), int((~a & b).sum()))


def sign_test_from_differences(differences: ArrayLike) -> tuple[int, int, int, float]:
    """``(higher, ties, lower, p)`` of an exact sign test on paired differences (ties dropped)."""
    d = np.asarray(differences, dtype=float)
    higher, lower = int((d > 0).sum()), int((d < 0).sum())
    return higher, int(d.size) - higher - lower, lower, sign_test_p(higher, lower)


@dataclass(frozen=True)
class BootstrapInterval:
    """The mean paired difference and its percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    resamples: int
    confidence: float


def paired_bootstrap(
    differences: ArrayLike, *, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> BootstrapInterval:
    """Percentile bootstrap of the mean of per-item differences ``d_i = score_a(i) - score_b(i)``.

    Items are resampled with replacement ``resamples`` times (one seeded generator); the
    interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    resampled means. For per-item scores (ROUGE-L ...) where McNemar's test does not apply.
    """
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or d.size == 0:
        raise ValueError("differences must be a non-empty 1-d array")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError("resamples must be >= 1 and confidence in (0, 1)")
    idx = np.random.default_rng(seed).integers(0, d.size, (resamples, d.size))
    means = d[idx].mean(axis=1)
    tail = round(50 * (1 - confidence), 10)  # 2.5 exactly for 0.95
    low, high = np.percentile(means, [tail, 100 - tail])
    return BootstrapInterval(float(d.mean()), float(low), float(high), resamples, confidence)


def label_prior_accuracy(predictions: Sequence[object], answers: Sequence[object]) -> float:
    """Accuracy of an item-blind guesser with the method's answer distribution.

    ``sum_y q(y) * g(y)``, ``q`` the share of predictions equal to label ``y`` and ``g`` the
    share of gold answers equal to ``y`` (labels compared as text): what a method scores by
    drawing its answer at random from the labels it favours, knowing nothing about the item.
    """
    if len(predictions) == 0 or len(answers) == 0:
        raise ValueError("label_prior_accuracy needs at least one prediction and one answer")
    pred = Counter(str(p) for p in predictions)
    gold = Counter(str(a) for a in answers)
    n_pred, n_gold = len(predictions), len(answers)
    return float(sum((count / n_pred) * (gold[label] / n_gold) for label, count in pred.items()))


def majority_label_share(predictions: Sequence[object]) -> tuple[str, float]:
    """The most frequent prediction (as text) and its share: 1.0 means one answer for every item."""
    if len(predictions) == 0:
        raise ValueError("majority_label_share needs at least one prediction")
    label, count = Counter(str(p) for p in predictions).most_common(1)[0]
    return label, count / len(predictions)


def length_prior_accuracy(
    choices: Sequence[Sequence[str]],
    gold: Sequence[int],
    *,
    pick: Literal["longest", "shortest"] = "longest",
    unit: Literal["chars", "words"] = "chars",
) -> float:
    """Expected accuracy of always choosing the longest (or shortest) answer option.

    Per item, the options of extreme length (characters or whitespace words) share the guess:
    an item scores ``1/k`` if the gold option is one of ``k`` tied extremes, else 0. A method
    near this number may be reading option length rather than content.
    """
    if len(choices) != len(gold) or not choices:
        raise ValueError("choices and gold must be non-empty and of equal length")
    if pick not in ("longest", "shortest") or unit not in ("chars", "words"):
        raise ValueError("pick must be 'longest' or 'shortest' and unit 'chars' or 'words'")
    total = 0.0
    for options, answer in zip(choices, gold, strict=True):
        if not 0 <= answer < len(options):
            raise ValueError(f"gold index {answer} outside {len(options)} options")
        lengths = [len(o) if unit == "chars" else len(o.split()) for o in options]
        extreme = max(lengths) if pick == "longest" else min(lengths)
        tied = [i for i, n in enumerate(lengths) if n == extreme]
        total += (answer in tied) / len(tied)
    return total / len(choices)
