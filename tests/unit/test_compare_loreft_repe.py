"""The comparison runner with LoReFT and RePE on the tiny model (synthetic three-option task)."""

import pytest

import jolalens.tasks
from jolalens import TrainConfig
from jolalens.compare import METHODS, CompareConfig, run_compare
from jolalens.models import model_dims
from jolalens.testing import choice_splits


@pytest.fixture
def patched(monkeypatch):
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)


def test_loreft_and_repe_run_in_compare(tiny, tmp_path, patched):
    train = TrainConfig(epochs=1, batch_size=4, warmup_steps=1, progress=False, max_length=64)
    config = CompareConfig(
        methods=("loreft", "repe", "zeroshot"),
        tasks=("arc_easy",),
        seeds=(0,),
        n_train=9,
        n_valid=6,
        n_test=6,
        budget=2,
        train=train,
    )
    results = run_compare(tiny, config, tmp_path / "cmp", log=lambda _: None)
    assert (results["status"] == "done").all() and results["score"].between(0, 1).all()
    by = results.set_index("method")
    assert by.loc["loreft", "trainable_parameters"] == 2 * (2 * 8 * 32 + 8)  # r=8, both layers, shared
    assert by.loc["repe", "trainable_parameters"] == 0
    for name in ("loreft", "repe"):
        assert (tmp_path / "cmp" / "runs" / "arc_easy" / name / "seed0" / "edit" / "jola_config.json").is_file()
    assert "| loreft |" in (tmp_path / "cmp" / "summary.md").read_text()


def test_search_spaces_start_from_the_published_recipe(tiny):
    dims = model_dims(tiny)
    assert METHODS["loreft"].search_space(dims)[0] == {"lr": 9e-4, "rank": 8}
    assert METHODS["repe"].needs_choices and len(METHODS["repe"].search_space(dims)) >= 4
