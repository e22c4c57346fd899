"""benchmarks/localization.py: its seed-stability statistics and its table (no model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SPEC = importlib.util.spec_from_file_location(
    "localization", Path(__file__).parents[2] / "benchmarks" / "localization.py"
)
loc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(loc)


def test_open_map_takes_the_larger_gate_of_the_two_types():
    maps = {"gate_additive": torch.tensor([[0.0, 0.4]]), "gate_multiplicative": torch.tensor([[0.2, 0.0]])}
    assert loc.open_map(maps).tolist() == [[pytest.approx(0.2), pytest.approx(0.4)]]


def test_stability_compares_each_seed_pair_with_random_sets_of_their_sizes():
    a = {(0, 0), (0, 1), (1, 0), (1, 1)}
    b = {(0, 0), (0, 1), (2, 2), (3, 3)}
    (row,) = loc.stability({0: a, 1: b}, n_total=100)
    assert row["seeds"] == "0-1" and row["overlap"] == 2
    assert row["expected_overlap"] == pytest.approx(0.16)
    assert row["jaccard"] == pytest.approx(2 / 6)
    assert row["random_jaccard"] == pytest.approx(0.16 / (8 - 0.16))
    assert 0 < row["p_hypergeometric"] < 0.05  # 2 shared of 4 and 4 among 100 is rare
    same = loc.stability({0: a, 1: set(a), 2: b}, n_total=100)
    assert [r["seeds"] for r in same] == ["0-1", "0-2", "1-2"] and same[0]["jaccard"] == 1.0


def test_markdown_has_a_row_per_seed_and_a_row_per_seed_pair():
    task = {
        "task": "arc_easy",
        "n_train": 100,
        "n_stop": 50,
        "n_ablate": 16,
        "chance": 0.25,
        "zero_shot": {"acc_norm": 0.4375},
        "per_seed": [
            {
                "seed": s,
                "jola": {"acc_norm": 0.625},
                "n_open": 10,
                "overlap": 3,
                "expected_overlap": 1.0,
                "p_permutation": 0.04,
                "auroc": 0.6,
                "spearman": 0.1,
            }
            for s in (0, 1)
        ],
        "stability": loc.stability({0: {(0, 0)}, 1: {(0, 0)}}, 270),
    }
    text = loc.markdown({"command": "python benchmarks/localization.py", "machine": "cpu", "tasks": [task]})
    assert text.count("| arc_easy | 100 / 50 / 16 |") == 2 and "| arc_easy | 0-1 |" in text
    assert "3 (1.0)" in text and "0.040" in text
