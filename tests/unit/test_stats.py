"""Paired tests and chance controls, against scipy where it has the same test and by hand."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from jolalens.analysis.stats import (
    label_prior_accuracy,
    length_prior_accuracy,
    majority_label_share,
    mcnemar_exact_p,
    paired_bootstrap,
    paired_mcnemar_p,
    sign_test_from_differences,
    sign_test_p,
)


@pytest.mark.parametrize("higher,lower", [(0, 1), (1, 1), (3, 9), (9, 3), (10, 0), (17, 25), (40, 61), (0, 30)])
def test_sign_test_matches_scipy_binomtest(higher, lower):
    expected = sps.binomtest(higher, higher + lower, 0.5, alternative="two-sided").pvalue
    assert sign_test_p(higher, lower) == pytest.approx(expected, rel=1e-12)


def test_sign_test_by_hand():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)  # both all-same outcomes of 5 fair coins
    assert sign_test_p(1, 3) == pytest.approx(2 * (1 + 4) / 16)
    with pytest.raises(ValueError, match=">= 0"):
        sign_test_p(-1, 2)


def test_exact_mcnemar_matches_scipy_on_discordant_items():
    rng = np.random.default_rng(3)
    a = rng.random(300) < 0.6
    b = rng.random(300) < 0.5
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    expected = sps.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert paired_mcnemar_p(a, b) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact_p(a_only, b_only) == paired_mcnemar_p(b, a)


def test_mcnemar_ignores_concordant_items():
    same = np.ones(50, dtype=bool)
    assert paired_mcnemar_p(same, same) == 1.0
    a = np.array([1, 1, 1, 0, 1, 1], dtype=bool)
    b = np.array([0, 0, 0, 0, 1, 1], dtype=bool)
    assert paired_mcnemar_p(a, b) == pytest.approx(2 / 8)  # 3 discordant, all for A
    with pytest.raises(ValueError, match="differ in length"):
        paired_mcnemar_p(a, b[:3])


def test_sign_test_from_differences_drops_ties():
    higher, ties, lower, p = sign_test_from_differences([0.1, 0.0, -0.2, 0.3, 0.0, 0.4])
    assert (higher, ties, lower) == (3, 2, 1)
    assert p == pytest.approx(sps.binomtest(3, 4, 0.5).pvalue)


def test_paired_bootstrap_constant_and_seeded():
    flat = paired_bootstrap([0.25] * 20, resamples=200)
    assert flat.mean == flat.low == flat.high == pytest.approx(0.25)
    d = np.random.default_rng(0).normal(0.1, 1.0, 80)
    a, b = paired_bootstrap(d, seed=5), paired_bootstrap(d, seed=5)
    assert a == b and a.low < a.mean < a.high


def test_paired_bootstrap_agrees_with_scipy_percentile_interval():
    d = np.random.default_rng(1).normal(0.3, 1.0, 200)
    ours = paired_bootstrap(d, resamples=20_000, seed=0)
    ref = sps.bootstrap((d,), np.mean, n_resamples=20_000, method="percentile", random_state=0)
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.05 * se * 4)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.05 * se * 4)
    # the percentile interval of a mean is close to the normal one, mean +- 1.96 se
    assert ours.high - ours.low == pytest.approx(2 * 1.96 * se, rel=0.08)


def test_label_prior_accuracy_by_hand():
    # predictions: A 3/4, B 1/4; gold: A 1/2, B 1/2 -> 3/4*1/2 + 1/4*1/2 = 1/2
    assert label_prior_accuracy(list("AAAB"), list("ABAB")) == pytest.approx(0.5)
    # always "A" with gold 1/3 "A": the prior is 1/3, whatever the items
    assert label_prior_accuracy(["A"] * 6, list("ABCABC")) == pytest.approx(1 / 3)
    # labels compare as text (a CSV reader may turn "true" into True)
    assert label_prior_accuracy([True, False], ["True", "True"]) == pytest.approx(0.5)


def test_majority_label_share():
    assert majority_label_share(list("ABBB")) == ("B", 0.75)


def test_length_prior_accuracy_by_hand():
    choices = [["a", "bbb", "cc"], ["dddd", "e"], ["ff", "gg"], ["one two", "three"]]
    gold = [1, 1, 0, 0]
    # longest (chars): item 1 right, item 2 wrong, item 3 a tie of 2 (1/2), item 4 "one two" (7 > 5)
    assert length_prior_accuracy(choices, gold) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    # shortest (chars): 0, 1, 1/2, 0
    assert length_prior_accuracy(choices, gold, pick="shortest") == pytest.approx(1.5 / 4)
    # words: item 4 two words vs one; items 1-3 all one word (ties of 3, 2, 2)
    by_words = (1 / 3 + 1 / 2 + 1 / 2 + 1) / 4
    assert length_prior_accuracy(choices, gold, unit="words") == pytest.approx(by_words)
    with pytest.raises(ValueError, match="outside"):
        length_prior_accuracy([["a", "b"]], [2])
