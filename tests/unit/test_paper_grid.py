"""The #7 grid: every cell once, the main table's seed 0 first, one Ray compare call per group,
snapshots and commits that keep results but leave LoRA's large weights behind, and re-scoring of
a run whose weights were not kept."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import jolalens.tasks
from jolalens.analysis.stats import mcnemar_exact_p
from jolalens.testing import choice_splits, tiny_model

_spec = importlib.util.spec_from_file_location("paper_grid", Path(__file__).parents[2] / "benchmarks" / "paper_grid.py")
grid = importlib.util.module_from_spec(_spec)
sys.modules["paper_grid"] = grid  # dataclasses look their module up there
_spec.loader.exec_module(grid)
report = importlib.util.module_from_spec(
    importlib.util.spec_from_file_location(
        "paper_grid_report", Path(__file__).parents[2] / "benchmarks" / "paper_grid_report.py"
    )
)
report.__spec__.loader.exec_module(report)


def test_plan_puts_the_cloze_grid_first_seed0_then_ablations_gemma_and_seeds():
    cells = grid.plan()
    cloze = [c for c in cells if c.group.startswith("cloze")]
    assert cells[: len(cloze)] == cloze
    n0 = len(grid.CLOZE_METHODS) * len(grid.COMMONSENSE)
    assert {(c.group, c.seed) for c in cloze[:n0]} == {("cloze", 0)}
    assert {c.method for c in cloze[:n0]} == set(grid.CLOZE_METHODS) >= {"loreft", "repe", "jola", "iti", "red"}
    ablations = cloze[n0 : n0 + len(grid.ABLATIONS) * len(grid.COMMONSENSE)]
    assert {c.method for c in ablations} == set(grid.ABLATIONS) and {c.seed for c in ablations} == {0}
    gemma = [c for c in cloze if c.group == "cloze_gemma"]
    assert {c.method for c in gemma} == set(grid.GEMMA_METHODS) and {c.seed for c in gemma} == {0}
    assert {(c.method, c.seed) for c in cloze if c.seed > 0} == {(m, s) for m in grid.CLOZE_METHODS for s in (1, 2)}
    assert len(cloze) == 9 * 8 * 3 + 4 * 8 + 4 * 8


def test_cloze_groups_score_cloze_and_gemma_runs_on_gemma():
    for group in ("cloze", "cloze_gemma"):
        cfg = grid.group_config(group)
        assert cfg.protocol.value == "cloze" and cfg.train.prompt_style.value == "cloze"
        assert (cfg.n_train, cfg.n_valid, cfg.n_test, cfg.budget, cfg.train.epochs) == (200, 200, 500, 2, 20)
    assert grid.group_model("cloze_gemma") == "gemma3-270m"
    assert grid.group_model("cloze") == grid.group_model("main") == "smollm2-135m-instruct"


def test_plan_has_every_cell_once_and_main_seed0_first():
    cells = grid.plan()
    assert len({c.key for c in cells}) == len(cells)
    cells = [c for c in cells if not c.group.startswith("cloze")]
    first = cells[: len(grid.BASELINES) * len(grid.COMMONSENSE)]
    assert {(c.group, c.seed) for c in first} == {("main", 0)}
    assert {c.method for c in first} == set(grid.BASELINES) and {c.task for c in first} == set(grid.COMMONSENSE)
    assert {c.group for c in cells} >= {"main", "gen", "nlu", "nlg", "datasize_n1000"}
    later_seeds = [c for c in cells if c.group == "main" and c.seed > 0]
    assert {c.method for c in later_seeds[:16]} == {"jola"}, "JoLA's seeds 1 and 2 come first"
    assert "datasize_n200" not in {c.group for c in cells}, "n = 200 is the main table"
    late_gen = [c for c in cells if c.group == "gen" and c.seed > 0]
    assert {(c.task, c.method, c.seed) for c in late_gen} == {(c.task, c.method, c.seed) for c in later_seeds}
    assert cells.index(late_gen[0]) > max(cells.index(c) for c in cells if c.group == "main"), "re-scoring comes last"


@pytest.mark.parametrize("group", ["main", "nlu", "nlg", "datasize_n50", "datasize_n1000"])
def test_group_configs_follow_the_paper_sizes(group):
    cfg = grid.group_config(group)
    assert (cfg.n_valid, cfg.n_test, cfg.budget, cfg.train.epochs) == (200, 500, 2, 20)
    assert cfg.n_train == (int(group.removeprefix("datasize_n")) if group.startswith("datasize") else 200)
    assert cfg.protocol.value == ("gen" if group == "nlg" else "loglik")


def test_rescoring_waits_for_its_run(tmp_path):
    cell = grid.Cell("main", "arc_easy", "jola", 0)
    gen = grid.Cell("gen", "arc_easy", "jola", 0)
    assert not grid._ready(gen, tmp_path)
    cell.run_dir(tmp_path).mkdir(parents=True)
    (cell.run_dir(tmp_path) / "result.json").write_text("{}")
    assert grid._ready(gen, tmp_path) and grid._done(cell, tmp_path) and not grid._done(gen, tmp_path)


def test_each_group_is_one_ray_compare_call_over_its_selected_cells():
    cells = grid.selected({"main", "gen", "nlu"}, {"jola", "zeroshot"}, skip=("main__piqa__*",))
    runs = grid.group_runs(cells)
    assert [g for g, _, _ in runs] == ["main", "nlu"], "groups in plan order; gen cells are re-scored, not compare runs"
    for group, config, todo in runs:
        mine = {(c.task, c.method, c.seed) for c in cells if c.group == group}
        assert todo == mine and config == grid.group_config(group)
        assert all(t in config.tasks and m in config.methods and s in config.seeds for t, m, s in todo)
    assert not any(t == "piqa" for t, _, _ in runs[0][2])


def _names(parts):
    names = []
    for part in parts:
        with tarfile.open(part) as tar:
            names += tar.getnames()
    return names


def test_snapshot_keeps_results_and_small_edits_only(tmp_path):
    out = tmp_path / "grid"
    for method, size in (("jola", 152_400), ("red", 138_000), ("bitfit", 622_000), ("lora", 1_800_000)):
        edit = out / "main" / "runs" / "arc_easy" / method / "seed0" / "edit"
        edit.mkdir(parents=True)
        (edit / "weights.safetensors").write_bytes(b"x" * size)
        (edit.parent / "result.json").write_text("{}")
    cut = out / "main" / "runs" / "piqa" / "jola" / "seed2"  # stopped by the deadline after saving its edit
    (cut / "edit").mkdir(parents=True)
    (cut / "edit" / "weights.safetensors").write_bytes(b"x" * 100)
    failed = out / "main" / "runs" / "piqa" / "red" / "seed0"
    failed.mkdir(parents=True)
    (failed / "error.txt").write_text("Traceback ...")
    (out / "logs").mkdir()
    (out / "logs" / "worker0.log").write_text("ok")
    parts = grid.snapshot(out, tmp_path / "snap")
    assert [p.name for p in parts] == ["results-01.tgz"]
    names = set(_names(parts))
    assert {f"main/runs/arc_easy/{m}/seed0/edit/weights.safetensors" for m in ("jola", "red")} <= names
    assert not any("lora/seed0/edit" in n or "bitfit/seed0/edit" in n for n in names)
    assert {f"main/runs/arc_easy/{m}/seed0/result.json" for m in ("jola", "lora", "red")} <= names
    assert not any(n.startswith("main/runs/piqa/jola/seed2") for n in names), "an unfinished run stays behind"
    assert "main/runs/piqa/red/seed0/error.txt" in names, "but a failed run's error comes back"
    assert "logs/worker0.log" in names


def test_snapshot_sends_only_what_is_new_in_parts_under_the_return_limit(tmp_path, monkeypatch):
    """On 2026-11-28 one tarball of every result outgrew the lease's 16 MiB per file and was lost."""
    out = tmp_path / "grid"
    old = out / "main" / "runs" / "boolq" / "red" / "seed0"
    old.mkdir(parents=True)
    (old / "result.json").write_text("{}")
    (out / "logs").mkdir()
    (out / "logs" / "worker0.log").write_text("committed\n")
    since = grid.file_stamps(out)
    assert set(since) == {"main/runs/boolq/red/seed0/result.json", "logs/worker0.log"}
    for task in ("arc_easy", "piqa", "siqa"):
        new = out / "main" / "runs" / task / "red" / "seed1"
        new.mkdir(parents=True)
        (new / "result.json").write_bytes(b"x" * 2500)
    (old / "gen_result.json").write_text("{}")  # a new file in a committed run
    with (out / "logs" / "worker0.log").open("a") as log:
        log.write("a line written during the run\n")
    monkeypatch.setattr(sys.modules["paper_grid_snapshot"], "SNAPSHOT_PART_BYTES", 8000)  # snapshot reads it there
    dest = tmp_path / "snap"
    (dest / "results-09.tgz").parent.mkdir()
    (dest / "results-09.tgz").write_bytes(b"left from an earlier snapshot")
    parts = grid.snapshot(out, dest, since)
    assert [p.name for p in parts] == ["results-01.tgz", "results-02.tgz"]
    assert sorted(p.name for p in dest.glob("*.tgz")) == ["results-01.tgz", "results-02.tgz"], "stale parts go"
    names = _names(parts)
    assert sorted(names) == sorted(
        [
            *(f"main/runs/{t}/red/seed1/result.json" for t in ("arc_easy", "piqa", "siqa")),
            "main/runs/boolq/red/seed0/gen_result.json",
            "logs/worker0.log",
        ]
    )
    assert all(p.stat().st_size < 8000 + 2048 for p in parts)


def test_selected_filters_groups_and_methods():
    cells = grid.selected({"nlu", "gen"}, {"zeroshot"})
    assert cells and {c.group for c in cells} == {"nlu", "gen"} and {c.method for c in cells} == {"zeroshot"}
    assert grid.selected(None, None) == grid.plan()


def test_skip_leaves_out_matching_cells_and_names_a_pattern_that_matches_none(tmp_path):
    kept = grid.selected({"main"}, {"bitfit"}, skip=("main__piqa__*", "main__siqa__bitfit__seed2"))
    keys = {c.key for c in kept}
    assert keys and not any(k.startswith("main__piqa__") for k in keys) and "main__siqa__bitfit__seed2" not in keys
    assert "main__siqa__bitfit__seed1" in keys
    script = Path(__file__).parents[2] / "benchmarks" / "paper_grid.py"
    shown = subprocess.run(
        [
            sys.executable,
            str(script),
            "--out",
            str(tmp_path),
            "--plan",
            "--only",
            "main",
            "--methods",
            "bitfit",
            "--skip",
            "main__piqa__*",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "main__siqa__bitfit__seed1" in shown.stdout and "main__piqa__" not in shown.stdout
    wrong = subprocess.run(
        [sys.executable, str(script), "--plan", "--skip", "piqa_bitfit"], capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "--skip: ['piqa_bitfit'] match no cell" in wrong.stderr


def test_gen_cell_retrains_a_run_whose_weights_were_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)
    model = tiny_model(seed=0)
    config = replace(grid.group_config("main", smoke=True), methods=("red",), tasks=("arc_easy",), seeds=(0,))
    config = replace(config, train=replace(config.train, max_length=64))
    from jolalens.compare import run_compare

    run_compare(model, config, tmp_path / "main", log=lambda s: None)
    main_dir = grid.Cell("main", "arc_easy", "red", 0).run_dir(tmp_path)
    before = (main_dir / "result.json").read_text()
    (main_dir / "edit" / "jola_weights.safetensors").unlink()  # as if the weights stayed on the GPU machine
    cell = grid.Cell("gen", "arc_easy", "red", 0)
    assert grid._ready(cell, tmp_path) and not grid._done(cell, tmp_path)
    row = grid.score_generation(model, cell, tmp_path, config, log=lambda s: None)
    assert grid._done(cell, tmp_path) and (main_dir / "result.json").read_text() == before
    assert row["edit_from"] == "rerun/runs/arc_easy/red/seed0" and 0 <= row["accuracy"] <= 1
    rerun = json.loads((tmp_path / "rerun" / "runs" / "arc_easy" / "red" / "seed0" / "result.json").read_text())
    assert rerun["score"] == json.loads(before)["score"] == row["loglik_score_main"]  # same seed, same CPU
    assert json.loads((main_dir / "gen_result.json").read_text()) == row


def test_compressed_items_read_back_the_same(tmp_path):
    import pandas as pd

    items = pd.DataFrame({"item": [0, 1], "answer": ["a", "b"], "prediction": ["a", "a"], "correct": [True, False]})
    items.to_csv(tmp_path / "test_items.csv", index=False)
    grid.compress_items(tmp_path)
    assert not (tmp_path / "test_items.csv").exists() and (tmp_path / "test_items.csv.gz").is_file()
    pd.testing.assert_frame_equal(report.read_items(tmp_path), items)
    assert report.read_items(tmp_path / "nothing") is None


def test_reextract_reads_stored_generations_again(tmp_path):
    """A change of extractor re-reads the kept generated text: no model, same items, new accuracy."""
    import pandas as pd

    test = choice_splits("arc_easy", 0, 0, 4).test
    run = tmp_path / "main" / "runs" / "arc_easy" / "jola" / "seed0"
    run.mkdir(parents=True)
    items = pd.DataFrame(
        {
            "item": range(4),
            "answer": ["a", "b", "c", "a"],
            "output": ["a", "bb", "nothing", "c"],
            "prediction": ["a", None, None, "c"],
            "correct": [True, False, False, False],
        }
    )
    items.to_csv(run / "gen_test_items.csv.gz", index=False)
    (run / "gen_result.json").write_text(json.dumps({"task": "arc_easy", "accuracy": 0.25}))
    assert grid.reextract_generation(run, "arc_easy", test) == (0.25, 0.5)  # "bb": a run of the label b
    result = json.loads((run / "gen_result.json").read_text())
    assert result["accuracy"] == 0.5 and result["unparsed"] == 0.25
    again = report.read_items(run, "gen_test_items")
    assert list(again["correct"]) == [True, True, False, False]
    assert grid.reextract_generation(run, "arc_easy", test) == (0.5, 0.5)
    with pytest.raises(ValueError, match="not the first 3 test items"):
        grid.reextract_generation(run, "arc_easy", test[:3])
    assert grid.reextract_generation(tmp_path, "arc_easy", test) is None


def test_changed_answers_counts_differing_predictions_on_the_same_items():
    import pandas as pd

    a = pd.DataFrame({"item": range(4), "prediction": ["a", "b", "c", "d"]})
    b = pd.DataFrame({"item": range(4), "prediction": ["a", "c", "c", None]})
    assert report.changed_answers(a, b) == 2
    assert report.changed_answers(a, a) == 0
    with pytest.raises(ValueError, match="different test items"):
        report.changed_answers(a, b.iloc[:3])


def test_search_margin_is_the_kept_points_lead_over_the_runner_up(tmp_path):
    pd.DataFrame({"lr": [0.005, 0.02], "val_ce": [0.70001, 0.70002]}).to_csv(tmp_path / "search.csv", index=False)
    assert abs(report.search_margin(tmp_path) - 1e-5) < 1e-12
    assert pd.isna(report.search_margin(tmp_path / "nothing"))


def _finished_run(out, task, method, seed, answers, preds, **record):
    run = out / "runs" / task / method / f"seed{seed}"
    run.mkdir(parents=True)
    pd.DataFrame(
        {
            "item": range(len(answers)),
            "answer": answers,
            "prediction": preds,
            "correct": [a == p for a, p in zip(answers, preds, strict=True)],
        }
    ).to_csv(run / "test_items.csv", index=False)
    grid.compress_items(run)
    row = {"task": task, "method": method, "seed": seed, "status": "done", "metric": "accuracy", "val_ce": 0.7}
    (run / "result.json").write_text(json.dumps({**row, "score": 0.0, "fit_seconds": 1.0, "device": "cpu", **record}))
    return run


def test_cells_csv_has_the_committed_columns_and_the_test_against_zeroshot(tmp_path):
    """One row per finished run with the columns of benchmarks/results/label_grid/cells.csv."""
    answers = ["answer1", "answer2"] * 5
    _finished_run(tmp_path, "openbookqa", "zeroshot", 0, answers, ["answer1"] * 10, hyperparameters={}, info={})
    jola = _finished_run(
        tmp_path,
        "openbookqa",
        "jola",
        1,
        answers,
        answers[:8] + ["answer2", "answer1"],
        hyperparameters={"lr": 0.005},
        info={"best_epoch": 3, "closed_fraction": {"additive": 0.25, "multiplicative": 0.5}},
    )
    pd.DataFrame({"lr": [0.005, 0.02], "val_ce": [0.70, 0.75]}).to_csv(jola / "search.csv", index=False)
    failed = tmp_path / "runs" / "openbookqa" / "red" / "seed0"
    failed.mkdir(parents=True)
    (failed / "error.txt").write_text("Traceback")
    cells = report.cell_table(tmp_path)
    committed = Path(__file__).parents[2] / "benchmarks" / "results" / "label_grid" / "cells.csv"
    assert list(cells.columns) == list(pd.read_csv(committed, nrows=0).columns) == report.COLUMNS
    assert cells[["method", "seed"]].values.tolist() == [["jola", 1], ["zeroshot", 0]], "the failed run is left out"
    row = cells.set_index("method").loc["jola"]
    assert row["accuracy"] == 0.8 and row["n_test"] == 10 and row["minus_zeroshot"] == pytest.approx(0.3)
    # zero-shot is right on items 0, 2, 4, 6, 8 and JoLA on 0-7: four items only JoLA gets right (1, 3, 5, 7),
    # one only zero-shot (8); the answers differ on those five
    assert row["mcnemar_p"] == pytest.approx(mcnemar_exact_p(4, 1)) and row["changed_vs_zeroshot"] == 5
    assert row["label_prior_accuracy"] == pytest.approx(0.5) and row["excess_over_label_prior"] == pytest.approx(0.3)
    assert (row["top_label"], row["top_label_share"]) == ("answer1", 0.5)
    assert (row["best_epoch"], row["closed_additive"], row["closed_multiplicative"]) == (3, 0.25, 0.5)
    assert row["hyperparameters"] == '{"lr": 0.005}' and row["search_margin"] == pytest.approx(0.05)
    zero = cells.set_index("method").loc["zeroshot"]
    assert (zero["top_label"], zero["top_label_share"], zero["changed_vs_zeroshot"]) == ("answer1", 1.0, 0)
    assert pd.isna(zero["best_epoch"]) and pd.isna(zero["search_margin"])
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out" / "cells.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "out" / "cells.csv")) == 2
    assert report.main([str(tmp_path / "runs")]) == 2, "not a compare directory"


def test_check_data_names_the_tasks_a_lent_machine_would_lack(tmp_path, monkeypatch):
    """pack.sh runs ``--check-data`` first: a task not cached here cannot reach the GPU machine."""
    from jolalens.tasks.sources import CACHE_FORMAT

    monkeypatch.setenv("JOLALENS_CACHE", str(tmp_path))
    gem = grid.selected({"nlg"}, None, None)
    assert grid.uncached_tasks(gem) == sorted(grid.GEM)
    (tmp_path / "tasks" / "xsum").mkdir(parents=True)
    (tmp_path / "tasks" / "xsum" / "source.json").write_text(json.dumps({"format": CACHE_FORMAT, "sizes": {"test": 1}}))
    assert grid.uncached_tasks(gem) == sorted(set(grid.GEM) - {"xsum"})
    script = Path(grid.__file__)
    env = {**os.environ, "JOLALENS_CACHE": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, str(script), "--check-data", "--only", "nlg"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 2 and "common_gen, e2e_nlg, web_nlg" in run.stderr and "load_task_splits" in run.stderr


def test_eos_probe_summarises_a_cell_with_both_protocols(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "eos_probe", Path(__file__).parents[2] / "benchmarks" / "eos_probe.py"
    )
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(
        json.dumps(
            {"score": 0.3, "hyperparameters": {"lr": 0.005}, "val_ce": 0.7, "info": {"best_epoch": 2}, "device": "cpu"}
        )
    )
    (run / "gen_result.json").write_text(json.dumps({"accuracy": 0.25}))
    pd.DataFrame(
        {
            "item": range(4),
            "answer": ["answer1"] * 4,
            "prediction": ["answer1", None, None, "answer2"],
            "output": ["answer1", "answer1/answer2/answer3/answer4", "I think", "answer2"],
        }
    ).to_csv(run / "gen_test_items.csv.gz", index=False)
    s = probe.cell_summary(run, "openbookqa")
    assert (s["loglik_accuracy"], s["gen_accuracy"], s["no_answer"], s["listing"]) == (0.3, 0.25, 0.5, 0.25)
    assert s["most_written"] == {"answer1": 1, "answer2": 1} and s["best_epoch"] == 2


def test_merge_adds_missing_files_and_overwrites_none(tmp_path):
    """A lease's tarballs: new runs and new files in old runs are added, the tree's own files kept."""
    machine, results, back = tmp_path / "machine", tmp_path / "results", tmp_path / "back"
    for root in (machine, results):
        old = root / "main" / "runs" / "boolq" / "red" / "seed0"
        old.mkdir(parents=True)
        (old / "result.json").write_text("{}")
        (root / "main" / "summary.md").write_text(f"table of {root.name}")
    (machine / "main" / "runs" / "boolq" / "red" / "seed0" / "gen_result.json").write_text("{}")
    new = machine / "main" / "runs" / "piqa" / "red" / "seed1"
    new.mkdir(parents=True)
    (new / "result.json").write_text("{}")
    (new / "error.txt").write_text("an earlier try failed")
    kept = results / "main" / "runs" / "piqa" / "red" / "seed1" / "points" / "point0"  # a stopped CPU attempt's point
    kept.mkdir(parents=True)
    (kept / "point.json").write_text("{}")
    unfinished = results / "main" / "runs" / "siqa" / "red" / "seed1" / "points" / "point0"
    unfinished.mkdir(parents=True)
    (unfinished / "point.json").write_text("{}")
    (machine / "logs" / "20261128-cuda").mkdir(parents=True)
    (machine / "logs" / "20261128-cuda" / "worker0.log").write_text("done\n")
    back.mkdir()
    for name, members in (("results-01", ["main"]), ("results-02", ["logs"])):
        with tarfile.open(back / f"{name}.tgz", "w:gz") as tar:
            for m in members:
                tar.add(machine / m, arcname=m)
    script = Path(__file__).parents[2] / "benchmarks" / "device" / "merge.sh"
    done = subprocess.run(["bash", str(script), str(back), str(results)], capture_output=True, text=True, check=True)
    assert (results / "main" / "runs" / "boolq" / "red" / "seed0" / "gen_result.json").is_file()
    assert (results / "main" / "runs" / "piqa" / "red" / "seed1" / "result.json").is_file()
    assert not (results / "main" / "runs" / "piqa" / "red" / "seed1" / "error.txt").exists()
    assert not kept.parent.exists(), "the finished run's kept search points are removed"
    assert (unfinished / "point.json").is_file(), "a run still unfinished keeps its points"
    assert (results / "logs" / "20261128-cuda" / "worker0.log").read_text() == "done\n"
    assert (results / "main" / "summary.md").read_text() == "table of results", "the tree's own file is kept"
    assert "added 4 files" in done.stdout
    missing = subprocess.run(
        ["bash", str(script), str(tmp_path / "nowhere"), str(results)], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no .tgz in" in missing.stderr


def test_the_grids_methods_are_registered_and_its_ablations_are_jolas():
    grid.check_methods()  # raises SystemExit naming a method the registry lacks
    from jolalens.methods import METHODS

    assert set(grid.BASELINES) <= set(METHODS) and set(grid.DATASIZE_METHODS) <= set(METHODS)


def _cloze_run(out, method, preds_norm, choices, answers):
    run = out / "runs" / "arc_easy" / method / "seed0"
    run.mkdir(parents=True)
    pd.DataFrame(
        {
            "item": range(len(answers)),
            "answer": answers,
            "choices": [str(list(c)) for c in choices],
            "prediction": preds_norm,
            "prediction_norm": preds_norm,
            "correct": [a == p for a, p in zip(answers, preds_norm, strict=True)],
            "correct_norm": [a == p for a, p in zip(answers, preds_norm, strict=True)],
        }
    ).to_csv(run / "test_items.csv", index=False)
    row = {"task": "arc_easy", "method": method, "seed": 0, "status": "done", "metric": "acc_norm", "val_ce": 0.7}
    (run / "result.json").write_text(
        json.dumps({**row, "score": 0.0, "fit_seconds": 1.0, "device": "cpu", "hyperparameters": {}, "info": {}})
    )


def test_cloze_cells_carry_acc_norm_its_test_against_zeroshot_and_the_position_and_length_controls(tmp_path):
    choices = [("a", "bbb", "cc"), ("dddd", "e", "ff")] * 5  # gold: the longest option on every item
    answers = ["bbb", "dddd"] * 5
    _cloze_run(tmp_path, "zeroshot", ["a", "e"] * 5, choices, answers)  # always wrong, always position 0/1
    _cloze_run(tmp_path, "jola", answers[:8] + ["a", "e"], choices, answers)  # 8 of 10 right, 8 fixed
    cells = report.cell_table(tmp_path).set_index("method")
    jola = cells.loc["jola"]
    assert jola["acc_norm"] == pytest.approx(0.8) and jola["minus_zeroshot_norm"] == pytest.approx(0.8)
    assert jola["mcnemar_p_norm"] == pytest.approx(2 * 0.5**8)  # 8 discordant items, all one way
    assert jola["longest_option_accuracy"] == 1.0 and jola["shortest_option_accuracy"] == 0.0
    # positions predicted: 1,0 (gold) on 8 items, 0,1 on 2; gold positions 1,0 alternate: the guesser scores 0.5
    assert jola["position_prior_norm"] == pytest.approx(0.5)
    assert cells.loc["zeroshot", "acc_norm"] == 0.0
    assert list(cells.columns[-1:]) == ["excess_over_label_prior"]
    assert set(report.CLOZE_COLUMNS) <= set(cells.columns)
