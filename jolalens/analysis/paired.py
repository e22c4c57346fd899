"""Paired comparison of two classifiers scored on the same items: the exact McNemar test.

Only the discordant items carry information: ``b`` items right under A and wrong under B,
``c`` wrong under A and right under B. Under the null (no difference) each discordant item
is a fair coin, so the two-sided exact p-value is ``min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .stats import mcnemar_exact_p

__all__ = ["McNemarResult", "mcnemar_exact"]


@dataclass(frozen=True)
class McNemarResult:
    """Discordant counts and the exact two-sided p-value."""

    a_only: int  # right under A, wrong under B
    b_only: int  # wrong under A, right under B
    p_value: float


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemarResult:
    """The exact (binomial) McNemar test of two paired per-item correctness vectors."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired vectors differ in length: {len(a_correct)} vs {len(b_correct)}")
    a_only = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if a and not b)
    b_only = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if b and not a)
    return McNemarResult(a_only, b_only, mcnemar_exact_p(a_only, b_only))
