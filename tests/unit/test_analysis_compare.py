"""Golden values of the head-set comparison metrics on hand-made maps."""

from __future__ import annotations

import math

import pytest
import torch

from jolalens.analysis import (
    auroc,
    compare_methods,
    compare_selection,
    head_label,
    head_set,
    hypergeometric_p_value,
    jaccard,
    jaccard_matrix,
    layer_distribution,
    overlap_at_k,
    permutation_p_value,
    spearman,
    top_k,
)


def test_top_k_and_head_set():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.5, -1.0]])
    assert top_k(scores, 2) == {(0, 1), (1, 0)}  # tie 0.5/0.5 broken by the lower flat index
    assert top_k(scores, 0) == frozenset()
    assert head_set(scores) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert head_set(scores, threshold=0.5) == {(0, 1)}
    assert head_label(1, 2) == "L1H2"
    with pytest.raises(ValueError, match=r"k must be in \[0, 6\]"):
        top_k(scores, 7)
    with pytest.raises(ValueError, match="n_layers, n_heads"):
        top_k(torch.zeros(6), 1)
    with pytest.raises(ValueError, match="NaN"):
        top_k(torch.tensor([[float("nan"), 0.0]]), 1)


def test_jaccard_and_overlap():
    assert jaccard({(0, 0), (0, 1)}, {(0, 1), (1, 1), (1, 2)}) == pytest.approx(1 / 4)
    assert jaccard(set(), set()) == 1.0
    assert jaccard({(0, 0)}, {(1, 1)}) == 0.0
    assert jaccard(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), {(1, 1)}) == 0.5
    a = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    b = torch.tensor([[4.0, 1.0], [2.0, 3.0]])
    assert overlap_at_k(a, b, 1) == 1.0
    assert overlap_at_k(a, b, 2) == 0.5
    assert overlap_at_k(a, b, 4) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        overlap_at_k(a, torch.zeros(2, 3), 1)


def test_spearman_golden():
    a = torch.arange(12.0).reshape(3, 4)
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, a**3) == pytest.approx(1.0)  # ranks only
    # x = [1, 2, 3, 4], y = [1, 3, 2, 4]: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 3.0], [2.0, 4.0]])) == pytest.approx(
        0.8
    )
    # ties take average ranks: x ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4]
    tied = spearman(torch.tensor([[1.0, 2.0], [2.0, 3.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert tied == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    assert math.isnan(spearman(torch.ones(2, 2), a[:2, :2]))


def test_auroc_golden():
    scores = torch.tensor([[0.9, 0.8], [0.1, 0.2]])
    perfect = torch.tensor([[True, True], [False, False]])
    assert auroc(scores, perfect) == 1.0
    assert auroc(-scores, perfect) == 0.0
    assert auroc(scores, {(0, 0), (1, 0)}) == pytest.approx(0.5)  # 0.9 beats both, 0.1 beats none
    assert auroc(torch.zeros(2, 2), perfect) == 0.5  # all tied
    with pytest.raises(ValueError, match="both positive and negative"):
        auroc(scores, torch.ones(2, 2, dtype=torch.bool))


def test_hypergeometric_and_permutation_p_values():
    # N=4, sets of size 2: P(overlap >= 2) = 1 / C(4, 2)
    assert hypergeometric_p_value(2, 4, 2, 2) == pytest.approx(1 / 6)
    assert hypergeometric_p_value(0, 4, 2, 2) == pytest.approx(1.0)
    selected = {(0, 0), (0, 1), (0, 2)}
    p, null = permutation_p_value(selected, selected, (4, 8), n_permutations=4000, seed=0)
    exact = hypergeometric_p_value(3, 32, 3, 3)
    assert null.shape == (4000,)
    assert float(null.mean()) == pytest.approx(3 * 3 / 32, abs=0.03)
    assert p == pytest.approx(max(exact, 1 / 4001), abs=2e-3)
    p_none, _ = permutation_p_value({(3, 7)}, {(0, 0)}, (4, 8), n_permutations=500)
    assert p_none == 1.0
    with pytest.raises(ValueError, match="outside"):
        permutation_p_value({(4, 0)}, {(0, 0)}, (4, 8))


def test_compare_selection_planted_agreement():
    importance = torch.zeros(4, 8)
    importance[1, 2], importance[2, 5], importance[3, 0] = 5.0, 4.0, 3.0
    gates = torch.zeros(4, 8)
    gates[1, 2], gates[2, 5], gates[3, 0] = 0.9, 0.8, 0.7
    row = compare_selection(gates, importance, n_permutations=2000).iloc[0]
    assert row["n_selected"] == 3 and row["k"] == 3 and row["overlap"] == 3
    assert row["overlap_at_k"] == 1.0 and row["jaccard"] == 1.0 and row["auroc"] == 1.0
    assert row["expected_overlap"] == pytest.approx(9 / 32)
    assert row["p_hypergeometric"] == pytest.approx(1 / math.comb(32, 3))
    assert row["p_permutation"] < 0.01
    anti = compare_selection(
        -importance + 10 * (importance == 0), importance, k=3, threshold=9.0, n_permutations=500
    ).iloc[0]
    assert anti["overlap"] == 0 and anti["auroc"] == 0.0
    with pytest.raises(ValueError, match="pass k"):
        compare_selection(torch.zeros(4, 8), importance)


def test_compare_methods_and_layer_distribution_and_matrix():
    ref = torch.arange(8.0).reshape(2, 4)
    frame = compare_methods({"same": ref, "reversed": -ref}, ref, k=2)
    assert list(frame["method"]) == ["same", "reversed"]
    assert list(frame["overlap_at_k"]) == [1.0, 0.0]
    assert list(frame["spearman"]) == pytest.approx([1.0, -1.0])
    dist = layer_distribution({(0, 1), (2, 0), (2, 3)}, n_layers=3, n_heads=4)
    assert list(dist["n_selected"]) == [1, 0, 2]
    assert list(dist["fraction_of_selected"]) == pytest.approx([1 / 3, 0, 2 / 3])
    assert list(dist["fraction_of_layer"]) == pytest.approx([0.25, 0, 0.5])
    matrix = jaccard_matrix({"seed0": {(0, 0), (0, 1)}, "seed1": {(0, 1)}, "gates": torch.tensor([[0.0, 1.0]])})
    assert matrix.loc["seed0", "seed1"] == pytest.approx(0.5)
    assert matrix.loc["seed1", "gates"] == 1.0
    assert (matrix.values.diagonal() == 1.0).all()
    assert (matrix.values == matrix.values.T).all()
