"""benchmarks/notebook_runs.py: budgets validate themselves; a bad protocol fails before any work."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def runs():
    spec = importlib.util.spec_from_file_location("notebook_runs", ROOT / "benchmarks" / "notebook_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["notebook_runs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_budgets_grow_from_fast_to_full(runs):
    fast, modest, full = runs.BUDGETS["fast"], runs.BUDGETS["modest"], runs.BUDGETS["full"]
    for field in ("n_train", "n_valid", "n_test", "epochs", "n_ablation"):
        assert getattr(fast, field) <= getattr(modest, field) <= getattr(full, field), field
    assert full.n_test >= 200, "notebook 03's own scores rest on hundreds of test items"
    with pytest.raises(ValueError, match="budget size"):
        runs.Budget(
            n_train=0, n_valid=1, n_test=1, epochs=1, warmup_steps=0, lr=1e-2, n_ablation=1, compare_sizes=(1, 1, 1, 1)
        )


def test_unknown_protocol_fails_before_loading_the_model(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(runs.jolalens, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ValueError, match="nope"):
        runs.main(["--protocol", "nope", "--out", str(tmp_path)])
    assert not (tmp_path / "manifest.json").exists()
