"""The exact McNemar test against values computed by hand and by scipy's binomial test."""

import pytest

from jolalens.analysis.paired import mcnemar_exact


def test_known_values():
    # 1 vs 9 discordant: 2 * (C(10,0) + C(10,1)) / 2**10
    r = mcnemar_exact([True] * 1 + [False] * 9 + [True] * 5, [False] * 1 + [True] * 9 + [True] * 5)
    assert (r.a_only, r.b_only) == (1, 9) and r.p_value == pytest.approx(22 / 1024)
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0  # no discordant item
    assert mcnemar_exact([True, False], [False, True]).p_value == 1.0  # balanced: capped at 1


def test_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    a = [True] * 30 + [False] * 12 + [True] * 40 + [False] * 18
    b = [False] * 30 + [True] * 12 + [True] * 40 + [False] * 18
    assert mcnemar_exact(a, b).p_value == pytest.approx(stats.binomtest(12, 42, 0.5).pvalue, rel=1e-9)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True], [True, False])
