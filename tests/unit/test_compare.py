"""The comparison runner on the tiny model: every method runs, tables appear, runs resume,
a crashed run costs nothing else, and a directory made with other settings is refused."""

import json
from dataclasses import replace

import pandas as pd
import pytest

import jolalens.tasks
from jolalens import TrainConfig
from jolalens.compare import METHODS, CompareConfig, markdown_table, run_compare, summarise
from jolalens.errors import JolaError
from jolalens.models import model_dims
from jolalens.testing import choice_splits

ALL = ("jola", "iti", "red", "lofit", "lora", "bitfit", "zeroshot")


_splits = choice_splits


@pytest.fixture
def patched(monkeypatch):
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", _splits)


def _config(**kw):
    train = TrainConfig(epochs=1, batch_size=4, warmup_steps=1, progress=False, max_length=64)
    base = dict(methods=ALL, tasks=("arc_easy",), seeds=(0,), n_train=9, n_valid=6, n_test=6, budget=1, train=train)
    base.update(kw)
    return CompareConfig(**base)


def test_all_methods_run_and_resume(tiny, tmp_path, patched):
    logs: list[str] = []
    results = run_compare(tiny, _config(), tmp_path / "cmp", log=logs.append)
    assert set(results["method"]) == set(ALL) and (results["status"] == "done").all()
    assert results["score"].between(0, 1).all()
    for name in ALL:
        run = tmp_path / "cmp" / "runs" / "arc_easy" / name / "seed0"
        assert (run / "result.json").is_file() and (run / "edit" / "jola_config.json").is_file()
        assert len(pd.read_csv(run / "test_items.csv")) == 6
    by = results.set_index("method")
    assert by.loc["zeroshot", "trainable_parameters"] == 0 and by.loc["iti", "trainable_parameters"] == 0
    assert by.loc["red", "trainable_parameters"] == 2 * 2 * 32
    md = (tmp_path / "cmp" / "summary.md").read_text()
    assert all(f"| {m} |" in md for m in ALL)

    logs.clear()
    again = run_compare(tiny, _config(), tmp_path / "cmp", log=logs.append)
    assert sum("skip" in line for line in logs) == len(ALL) and not any(line.startswith("run ") for line in logs)
    pd.testing.assert_frame_equal(
        again.sort_values("method").reset_index(drop=True), results.sort_values("method").reset_index(drop=True)
    )

    # more seeds later: only the new runs happen
    logs.clear()
    run_compare(tiny, _config(methods=("zeroshot",), seeds=(0, 1)), tmp_path / "cmp", log=logs.append)
    assert [line for line in logs if line.startswith("run ")] == ["run arc_easy/zeroshot/seed1"]


def test_a_crashed_run_costs_nothing_else(tiny, tmp_path, patched, monkeypatch):
    def boom(*args, **kw):
        raise RuntimeError("planted failure")

    monkeypatch.setitem(METHODS, "red", replace(METHODS["red"], fit=boom))
    config = _config(methods=("red", "zeroshot"))
    results = run_compare(tiny, config, tmp_path / "cmp", log=lambda s: None)
    status = dict(zip(results["method"], results["status"], strict=True))
    assert status == {"red": "failed", "zeroshot": "done"}
    assert "planted failure" in (tmp_path / "cmp" / "runs" / "arc_easy" / "red" / "seed0" / "error.txt").read_text()
    assert "red/seed0" in (tmp_path / "cmp" / "summary.md").read_text()

    monkeypatch.undo()
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", _splits)
    logs: list[str] = []
    results = run_compare(tiny, config, tmp_path / "cmp", log=logs.append)
    assert (results["status"] == "done").all()
    assert [line for line in logs if line.startswith("run ")] == ["run arc_easy/red/seed0"]


def test_other_settings_or_foreign_directory_refused(tiny, tmp_path, patched):
    run_compare(tiny, _config(methods=("zeroshot",)), tmp_path / "cmp", log=lambda s: None)
    with pytest.raises(JolaError, match="other settings"):
        run_compare(tiny, _config(methods=("zeroshot",), n_train=12), tmp_path / "cmp", log=lambda s: None)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(JolaError, match="not a jolalens comparison"):
        run_compare(tiny, _config(methods=("zeroshot",)), tmp_path / "foreign", log=lambda s: None)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    saved = json.loads((tmp_path / "cmp" / "compare_config.json").read_text())
    assert saved["protocol"]["n_train"] == 9


def test_config_validation():
    with pytest.raises(JolaError, match="unknown method"):
        _config(methods=("jola", "prefix"))
    with pytest.raises(JolaError, match="budget"):
        _config(budget=0)


def test_summary_mean_std_and_markdown():
    rows = [
        {
            "task": t,
            "method": m,
            "seed": s,
            "status": "done",
            "score": sc,
            "trainable_parameters": p,
            "fit_seconds": 1.0,
            "eval_seconds": 1.0,
            "val_ce": 1.0,
        }
        for t, m, s, sc, p in [
            ("a", "jola", 0, 0.5, 10),
            ("a", "jola", 1, 0.7, 10),
            ("b", "jola", 0, 0.4, 10),
            ("a", "red", 0, 0.3, 4),
        ]
    ]
    summary = summarise(pd.DataFrame(rows)).set_index(["task", "method"])
    assert summary.loc[("a", "jola"), "mean"] == pytest.approx(0.6)
    assert summary.loc[("a", "jola"), "std"] == pytest.approx(0.1414, abs=1e-4)
    assert summary.loc[("a", "jola"), "n_seeds"] == 2
    md = markdown_table(summary.reset_index())
    assert "| jola | 60.0 ± 14.1 (n=2) | 40.0 (n=1) | 50.0 | 10 |" in md
    assert "| red | 30.0 (n=1) | – | – | 4 |" in md
    na = pd.DataFrame([{"task": "b", "method": "red"}])
    assert "| red | 30.0 (n=1) | n/a | – | 4 |" in markdown_table(summary.reset_index(), not_applicable=na)
    untimed = summary.reset_index().assign(fit_seconds=float("nan"))  # e.g. every cell ran on another device
    assert "| red | 30.0 (n=1) | – | – | 4 | – |" in markdown_table(untimed)


def test_fit_time_mean_leaves_out_runs_on_another_device(tmp_path):
    from jolalens.compare import usual_device_times, write_tables

    results = pd.DataFrame(
        {
            "status": ["done"] * 3,
            "device": ["cuda:0", "cuda:0", "cpu"],
            "fit_seconds": [10.0, 20.0, 1000.0],
            "eval_seconds": [1.0, 1.0, 50.0],
        }
    )
    kept = usual_device_times(results)
    assert kept["fit_seconds"].iloc[:2].tolist() == [10.0, 20.0] and pd.isna(kept["fit_seconds"].iloc[2])
    assert pd.isna(kept["eval_seconds"].iloc[2])
    mixed = results.assign(resumed_points=[None, json.dumps([{"point": 1, "device": "cpu"}]), None])
    assert pd.isna(usual_device_times(mixed)["fit_seconds"].iloc[1]), (
        "a point fitted on the CPU makes the run's time mixed"
    )
    same = results.assign(resumed_points=[json.dumps([{"point": 1, "device": "cuda:0"}]), None, None])
    assert usual_device_times(same)["fit_seconds"].iloc[0] == 10.0
    for seed, device, fit in [(0, "cuda:0", 10.0), (1, "cuda:0", 20.0), (2, "cpu", 1000.0)]:
        run = tmp_path / "runs" / "a" / "jola" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(
            json.dumps(
                {
                    "task": "a",
                    "method": "jola",
                    "seed": seed,
                    "status": "done",
                    "metric": "accuracy",
                    "score": 0.5,
                    "trainable_parameters": 10,
                    "fit_seconds": fit,
                    "eval_seconds": 1.0,
                    "val_ce": 1.0,
                    "device": device,
                }
            )
        )
    write_tables(tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "| jola | 50.0 ± 0.0 (n=3) | 50.0 | 10 | 15 |" in md, md
    assert "runs on cuda:0 only; runs on cpu are left out" in md


def test_compare_figures_from_a_finished_comparison(tiny, tmp_path, patched, monkeypatch):
    import torch

    from jolalens.analysis import HeadScores, compare_report, make_compare_figures

    figs = {}

    def fake_save_figures(items, **kw):
        for fig, path in items:
            figs[path.name] = fig
        return [path.with_suffix(".html") for _, path in items]

    monkeypatch.setattr(compare_report, "save_figures", fake_save_figures)
    run_compare(tiny, _config(methods=("jola", "iti", "lofit", "zeroshot")), tmp_path / "cmp", log=lambda s: None)
    importance = torch.zeros(2, 4)
    importance[1, 3] = 1.0
    scores = HeadScores(importance, None, -1.0, None, "attribution", "mean", 6)
    paths = make_compare_figures(tmp_path / "cmp", "arc_easy", tmp_path / "fig", model=tiny, scores=scores)
    assert set(figs) == {
        "arc_easy_test_accuracy",
        "arc_easy_head_maps",
        "arc_easy_head_jaccard",
        "arc_easy_jola_vs_attribution",
    }
    bars = figs["arc_easy_test_accuracy"]
    assert sorted(bars.data[0].x) == ["iti", "jola", "lofit", "zeroshot"]
    assert [t.text for t in figs["arc_easy_head_maps"].layout.annotations] == [
        "JoLA |edit|",
        "ITI probe accuracy",
        "LoFiT heads",
    ]
    jac = pd.read_csv(tmp_path / "fig" / "arc_easy_head_jaccard.csv", index_col=0)
    assert list(jac.columns) == ["JoLA", "ITI", "LoFiT"] and (jac.values.diagonal() == 1).all()
    agreement = pd.read_csv(tmp_path / "fig" / "arc_easy_vs_attribution_mean.csv")
    assert list(agreement["method"]) == ["JoLA |edit|", "ITI probe accuracy"]
    assert (agreement["n_selected"] == agreement["k"]).all()
    assert tmp_path / "fig" / "arc_easy_head_layers.csv" in paths


def test_iti_is_not_applicable_to_generation_tasks(tiny, tmp_path, patched):
    results = run_compare(tiny, _config(methods=("iti",), tasks=("e2e_nlg",)), tmp_path / "cmp", log=lambda s: None)
    assert list(results["status"]) == ["not_applicable"]
    logs: list[str] = []
    run_compare(tiny, _config(methods=("iti",), tasks=("e2e_nlg",)), tmp_path / "cmp", log=logs.append)
    assert logs == ["skip e2e_nlg/iti/seed0: done"]


def test_jola_ablations_change_one_design_choice(tiny, tmp_path, patched):
    ablations = ("jola_additive", "jola_multiplicative", "jola_shared_gate", "jola_no_gate")
    results = run_compare(tiny, _config(methods=ablations), tmp_path / "cmp", log=lambda s: None)
    assert (results["status"] == "done").all()
    expected = {
        "jola_additive": ("additive", "separate"),
        "jola_multiplicative": ("multiplicative", "separate"),
        "jola_shared_gate": ("both", "shared"),
        "jola_no_gate": ("both", "none"),
    }
    for name, (edit_type, gate_mode) in expected.items():
        saved = json.loads(
            (tmp_path / "cmp" / "runs" / "arc_easy" / name / "seed0" / "edit" / "jola_config.json").read_text()
        )
        assert (saved["config"]["edit_type"], saved["config"]["gate_mode"]) == (edit_type, gate_mode)
    params = results.set_index("method")["trainable_parameters"]
    assert (
        params["jola_additive"]
        == params["jola_multiplicative"]
        < params["jola_shared_gate"]
        < params["jola_no_gate"] * 2
    )


def test_generation_scores_are_not_scaled_twice():
    summary = pd.DataFrame(
        [
            {
                "task": "e2e_nlg",
                "method": "jola",
                "mean": 45.25,
                "std": float("nan"),
                "n_seeds": 1,
                "trainable_parameters": 10,
                "fit_seconds": 1.0,
            }
        ]
    )
    assert "45.2 (n=1)" in markdown_table(summary, scale=1.0)
    assert "4525.0" in markdown_table(summary)


@pytest.mark.parametrize("name", ["jola", "lofit", "lora"])
def test_a_stopped_run_resumes_at_its_next_search_point(tiny, tmp_path, patched, monkeypatch, name):
    """A run stopped after its first search point refits only the second, and ends as an unbroken run does."""
    config = _config(methods=(name,), budget=2)
    whole = run_compare(tiny, config, tmp_path / "whole", log=lambda s: None)

    spec, calls = METHODS[name], []

    def stopped_at_second_point(*args):
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a killed worker would stop
        return spec.fit(*args)

    monkeypatch.setitem(METHODS, name, replace(spec, fit=stopped_at_second_point))
    with pytest.raises(KeyboardInterrupt):
        run_compare(tiny, config, tmp_path / "cut", log=lambda s: None)
    run = tmp_path / "cut" / "runs" / "arc_easy" / name / "seed0"
    assert (run / "points" / "point0" / "point.json").is_file() and not (run / "result.json").exists()

    calls.clear()
    monkeypatch.setitem(METHODS, name, replace(spec, fit=lambda *args: calls.append(args[3]) or spec.fit(*args)))
    logs: list[str] = []
    resumed = run_compare(tiny, config, tmp_path / "cut", log=logs.append)
    points = spec.search_space(model_dims(tiny))[:2]
    assert calls == [points[1]], "only the second point is fitted again"
    assert any("point 1/2" in line and "kept from an interrupted attempt" in line for line in logs)
    assert not (run / "points").exists()
    kept = json.loads((run / "result.json").read_text())["resumed_points"]
    assert [(k["point"], k["device"]) for k in kept] == [(1, "cpu")], (
        "the result says which point an earlier attempt fitted, and where"
    )
    assert "resumed_points" not in json.loads(
        (tmp_path / "whole" / "runs" / "arc_easy" / name / "seed0" / "result.json").read_text()
    )
    cols = ["score", "val_ce", "hyperparameters", "trainable_parameters"]
    pd.testing.assert_frame_equal(resumed[cols], whole[cols])
    pd.testing.assert_frame_equal(
        pd.read_csv(run / "search.csv"),
        pd.read_csv(tmp_path / "whole" / "runs" / "arc_easy" / name / "seed0" / "search.csv"),
    )
