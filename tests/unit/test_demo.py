"""The demo's flow on the tiny model: cloze protocol, paired test, outputs under its run dir."""

import jolalens.demo as demo
from jolalens.data import Example
from jolalens.tasks import TaskSplits


def _splits(task, n_train, n_valid, n_test, seed, protocol=None):
    assert protocol == "cloze"

    def make(n, o):
        return [
            Example(f"Question: pick {i + o}\nAnswer:", c, ("a b", "c", "d e f"))
            for i, c in zip(range(n), ["a b", "c", "d e f"] * n, strict=False)
        ]

    return TaskSplits(make(n_train, 0), make(n_valid, 100), make(n_test, 200))


def test_demo_reports_intervals_mcnemar_and_verdict(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_model", lambda name: tiny)
    monkeypatch.setattr(demo, "load_task_splits", _splits)
    budget = demo.DemoBudget(n_train=6, n_valid=3, n_test=9, epochs=1)
    assert demo.run_demo(budget=budget, figures_dir=None, run_dir=tmp_path / "demo") == 0
    out = capsys.readouterr().out
    assert "exact McNemar p" in out and "acc_norm" in out and "Verdict:" in out and "gates closed" in out
    assert "label-prior control" in out and "length-prior control: always the longest option scores" in out
    assert (tmp_path / "demo" / "test_jola.csv").is_file() and (tmp_path / "demo" / "edit").is_dir()
