"""The #7 grid: every cell once, the main table's seed 0 first, one Ray compare call per group,
snapshots and commits that keep results but leave LoRA's large weights behind, and re-scoring of
a run whose weights were not kept."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import jolalens.tasks
from jolalens.analysis.stats import mcnemar_exact_p, sign_test_p
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


def test_plan_has_every_cell_once_and_main_seed0_first():
    cells = grid.plan()
    assert len({c.key for c in cells}) == len(cells)
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
    monkeypatch.setattr(grid, "SNAPSHOT_PART_BYTES", 8000)
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


def test_ablation_table_reads_against_jola(tmp_path):
    import pandas as pd

    for method, correct in (("jola", [True] * 3 + [False] * 7), ("jola_additive", [True] + [False] * 9)):
        run = tmp_path / "openbookqa" / method / "seed0"
        run.mkdir(parents=True)
        pd.DataFrame({"item": range(10), "correct": correct}).to_csv(run / "test_items.csv", index=False)

    seed0 = pd.DataFrame(
        [
            {
                "task": "openbookqa",
                "method": "jola",
                "accuracy": 0.30,
                "mcnemar_p": 0.001,
                "closed_additive": 0.0,
                "closed_multiplicative": 0.0,
            },
            {
                "task": "openbookqa",
                "method": "jola_additive",
                "accuracy": 0.28,
                "mcnemar_p": 0.1,
                "closed_additive": 0.5,
            },
            {"task": "piqa", "method": "jola", "accuracy": 0.5, "mcnemar_p": 1.0},
        ]
    )
    lines = report._ablation_section(seed0, tmp_path)
    table = "\n".join(lines)
    assert "| variant | openbookqa |" in table and "piqa" not in table, "only tasks with an ablation run"
    # p against JoLA on the same items: 2 items only JoLA gets right, none the other way
    assert "| additive only | 28.0 (-2.0; p=0.5), closed 50.0/–% |" in table
    assert "| no gates | – |" in table
    assert report._ablation_section(seed0[seed0["method"] == "jola"], tmp_path) == []


def test_ablation_later_seeds_stand_against_jolas_same_seed(tmp_path):
    import pandas as pd

    answers = {
        "jola": ["a", "b", "c", "a", "b", "c", "a", "b", "a", "a"],  # right on items 0-5
        "jola_no_gate": ["b"] * 10,
        "jola_additive": ["a", "b", "c", "a", "b", "c", "a", "b", "a", "a"],
    }
    gold = ["a", "b", "c", "a", "b", "c", "c", "c", "c", "b"]
    for method, pred in answers.items():
        for seed in (0, 2):
            run = tmp_path / "arc_easy" / method / f"seed{seed}"
            run.mkdir(parents=True)
            pd.DataFrame(
                {
                    "item": range(10),
                    "answer": gold,
                    "prediction": pred,
                    "correct": [p == g for p, g in zip(pred, gold, strict=True)],
                }
            ).to_csv(run / "test_items.csv", index=False)
    cells = pd.DataFrame(
        [
            {
                "task": "arc_easy",
                "method": m,
                "seed": seed,
                "accuracy": acc,
                "n_test": 10,
                "closed_additive": ca,
                "closed_multiplicative": 0.0,
                "best_epoch": 2,
            }
            for seed in (0, 2)
            for m, acc, ca in (("jola", 0.6, 0.0), ("jola_no_gate", 0.3, float("nan")), ("jola_additive", 0.6, 0.9))
        ]
    )
    gen = pd.DataFrame([{"task": "arc_easy", "method": "jola_no_gate", "seed": 2, "accuracy": 0.1}])
    table = report.ablation_later_seeds(cells, gen, tmp_path)
    assert table["seed"].unique().tolist() == [2], "seed 0 has its own section"
    assert table["method"].tolist() == ["jola", "jola_additive", "jola_no_gate"], "JoLA's own run first"
    row = table.set_index("method").loc["jola_no_gate"]
    # JoLA right alone on items 0, 2, 3, 5; no gates right alone on item 9
    assert row["mcnemar_p"] == pytest.approx(mcnemar_exact_p(4, 1))
    assert row["changed_vs_jola"] == 7 and row["minus_jola"] == pytest.approx(-0.3)
    assert row["answers"] == "b 100%"
    assert table.set_index("method").loc["jola", "answers"] == "a 50%, b 30%, c 20%"
    text = "\n".join(report._ablation_later_seeds_section(table))
    assert "| arc_easy | 2 | no gates | 30.0 (10.0) | -30.0 (p=0.38) | 7 / 10 | b 100% | –/0.0% | 2 |" in text
    assert (
        "| arc_easy | 2 | additive only | 60.0 (–) | +0.0 (p=1) | 0 / 10 | a 50%, b 30%, c 20% | 90.0/0.0% | 2 |"
        in text
    )
    assert "| arc_easy | 2 | JoLA (both edits, separate gates) | 60.0 (–) | – | – |" in text
    assert (
        report._ablation_later_seeds_section(report.ablation_later_seeds(cells[cells["seed"] == 0], gen, tmp_path))
        == []
    )


def test_report_from_a_small_grid(tmp_path):
    """The whole report on two runs: main table, ablations, and the generation-protocol table."""
    import pandas as pd

    answers = ["answer1", "answer2"] * 5
    for method, preds, gen_acc in (("zeroshot", ["answer1"] * 10, None), ("jola_additive", answers, 0.8)):
        run = tmp_path / "main" / "runs" / "openbookqa" / method / "seed0"
        run.mkdir(parents=True)
        items = pd.DataFrame(
            {
                "item": range(10),
                "answer": answers,
                "prediction": preds,
                "correct": [a == p for a, p in zip(answers, preds, strict=True)],
            }
        )
        items.to_csv(run / "test_items.csv", index=False)
        grid.compress_items(run)
        score = float(items["correct"].mean())
        (run / "result.json").write_text(
            json.dumps(
                {
                    "task": "openbookqa",
                    "method": method,
                    "seed": 0,
                    "status": "done",
                    "metric": "accuracy",
                    "score": score,
                    "val_ce": 0.7,
                    "hyperparameters": {},
                    "trainable_parameters": 0,
                    "fit_seconds": 1.0,
                    "eval_seconds": 1.0,
                    "info": {"closed_fraction": {"additive": 0.25}} if method != "zeroshot" else {},
                }
            )
        )
        if gen_acc is not None:
            (run / "gen_result.json").write_text(
                json.dumps({"task": "openbookqa", "method": method, "seed": 0, "protocol": "gen", "accuracy": gen_acc})
            )
            gen_preds = answers[:8] + [None, None]  # two outputs with no readable answer, one listing labels
            outputs = answers[:8] + ["answer1/answer2/answer3/answer4", "I do not know"]
            pd.DataFrame(
                {
                    "item": range(10),
                    "answer": answers,
                    "output": outputs,
                    "prediction": gen_preds,
                    "correct": [a == p for a, p in zip(answers, gen_preds, strict=True)],
                }
            ).to_csv(run / "gen_test_items.csv.gz", index=False)
    text = report.report(tmp_path)
    assert "| jola_additive | 80.0 (100.0; 20.0% / 10.0%) |" in text, (
        "generation accuracy (log-likelihood; unparsed / listing)"
    )
    assert "| additive only | 100.0" in text and "closed 25.0/–%" in text
    assert (tmp_path / "report.md").read_text() == text


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


def test_seed_section_lists_each_seed_with_both_protocols():
    import pandas as pd

    base = {
        "task": "piqa",
        "method": "jola",
        "label_prior_accuracy": 0.5,
        "minus_zeroshot": -0.02,
        "mcnemar_p": 0.4,
        "closed_additive": 0.5,
        "closed_multiplicative": 1.0,
        "best_epoch": 3,
        "hyperparameters": '{"lr": 0.02}',
    }
    cells = pd.DataFrame([{**base, "seed": 0, "accuracy": 0.48}, {**base, "seed": 1, "accuracy": 0.50}])
    gen = pd.DataFrame([{"task": "piqa", "method": "jola", "seed": 1, "accuracy": 0.55}])
    table = "\n".join(report._seed_section(cells, gen))
    assert "| piqa | 0 | 48.0 (–) | -2.0 (p=0.4) | 50.0 | 50.0/100.0% | 3 | 0.02 |" in table
    assert "| piqa | 1 | 50.0 (55.0) |" in table
    assert report._seed_section(cells[cells["seed"] == 0], gen) == [], "one seed: nothing to compare"


def test_near_ties_in_the_search_are_listed(tmp_path):
    import pandas as pd

    pd.DataFrame({"lr": [0.005, 0.02], "val_ce": [0.70001, 0.70002]}).to_csv(tmp_path / "search.csv", index=False)
    assert abs(report.search_margin(tmp_path) - 1e-5) < 1e-12
    assert pd.isna(report.search_margin(tmp_path / "nothing"))
    cells = pd.DataFrame(
        [
            {"task": "piqa", "method": "jola", "seed": 0, "search_margin": 1e-5, "hyperparameters": '{"lr": 0.005}'},
            {"task": "piqa", "method": "red", "seed": 0, "search_margin": 0.05, "hyperparameters": '{"lr": 0.01}'},
            {"task": "piqa", "method": "zeroshot", "seed": 0, "search_margin": float("nan"), "hyperparameters": "{}"},
        ]
    )
    text = "\n".join(report._near_tie_section(cells))
    assert "1 of 2 searched runs" in text and "| piqa | jola | 0 | 1.0e-05 |" in text and "| piqa | red |" not in text


def test_prior_section_shows_accuracy_prior_and_top_answer_share():
    import pandas as pd

    cells = pd.DataFrame(
        [
            {
                "task": "mmlu_law",
                "method": "zeroshot",
                "seed": 0,
                "accuracy": 0.246,
                "label_prior_accuracy": 0.246,
                "top_label_share": 1.0,
            }
        ]
    )
    assert "| zeroshot | 24.6 \\| 24.6 \\| 100.0 |" in "\n".join(report._prior_section(cells))


def test_datasize_curve_and_figure(tmp_path):
    """The curve joins the data-size runs with the main table's n = 200 runs and zero-shot."""
    import pandas as pd

    def result(group: str, method: str, score: float, seed: int = 0) -> None:
        run = tmp_path / group / "runs" / "arc_easy" / method / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(
            json.dumps(
                {
                    "task": "arc_easy",
                    "method": method,
                    "seed": seed,
                    "status": "done",
                    "metric": "accuracy",
                    "score": score,
                    "val_ce": 1.0,
                    "hyperparameters": {},
                    "trainable_parameters": 0,
                    "fit_seconds": 1.0,
                    "eval_seconds": 1.0,
                }
            )
        )
        n_right = round(50 * score)
        pd.DataFrame(
            {
                "item": range(50),
                "answer": "A",
                "prediction": ["A"] * n_right + ["B"] * (50 - n_right),
                "correct": [True] * n_right + [False] * (50 - n_right),
            }
        ).to_csv(run / "test_items.csv", index=False)

    assert report.datasize_curve(tmp_path).empty, "no data-size run yet: no curve"
    result("main", "zeroshot", 0.22)
    result("main", "jola", 0.24)
    result("main", "jola", 0.30, seed=1)  # other seeds are not the curve's point
    result("main", "iti", 0.25)  # not a data-size method
    result("datasize_n50", "jola", 0.26)
    result("datasize_n50", "jola", 0.40, seed=1)
    curve = report.datasize_curve(tmp_path)
    assert curve.drop(columns="label_prior").to_dict("records") == [
        {"task": "arc_easy", "method": "jola", "n_train": 50, "mean": 0.26},
        {"task": "arc_easy", "method": "jola", "n_train": 200, "mean": 0.24},
        {"task": "arc_easy", "method": "zeroshot", "n_train": 0, "mean": 0.22},
    ]
    assert list(curve["label_prior"]) == pytest.approx([0.26, 0.24, 0.22]), "answers all 'A': prior = share of A"
    fig = report.datasize_figure(curve)
    jola = next(t for t in fig.data if t.name == "jola")
    assert list(jola.x) == [50, 200] and list(jola.y) == pytest.approx([26.0, 24.0])
    zeroshot = next(t for t in fig.data if t.name == "zero-shot")
    assert list(zeroshot.y) == pytest.approx([22.0, 22.0]) and zeroshot.showlegend, (
        "zero-shot line, named in the legend"
    )
    assert not fig.layout.annotations or all(a.text != "zero-shot" for a in fig.layout.annotations), (
        "no label on the curves"
    )
    assert "| arc_easy | jola | 22.0 (22.0) | 26.0 (26.0) | 24.0 (24.0) |" in report.report(tmp_path, attribution=False)


def test_pooled_test_against_zeroshot_adds_up_the_tasks(tmp_path):
    """Two tasks pooled: the won and lost items add up, and p comes from the pooled counts."""
    import pandas as pd

    def items(task: str, method: str, correct: list[bool]) -> None:
        run = tmp_path / "nlu" / "runs" / task / method / "seed0"
        run.mkdir(parents=True)
        (run / "result.json").write_text("{}")
        pd.DataFrame({"item": range(len(correct)), "answer": "A", "prediction": "A", "correct": correct}).to_csv(
            run / "test_items.csv", index=False
        )

    items("t1", "zeroshot", [False] * 6 + [True] * 4)
    items("t1", "jola", [True] * 6 + [True] * 3 + [False])  # won 6, lost 1
    items("t2", "zeroshot", [False] * 10)
    items("t2", "jola", [True] * 5 + [False] * 5)  # won 5
    items("t2", "red", [True] + [False] * 9)  # red ran on t2 only
    pooled = report.pooled_vs_zeroshot(tmp_path).set_index("method")
    assert pooled.loc["jola", ["tasks", "items", "better", "worse"]].tolist() == [2, 20, 11, 1]
    assert pooled.loc["jola", "mcnemar_p"] == pytest.approx(mcnemar_exact_p(11, 1))
    assert pooled.loc["jola", "accuracy"] == pytest.approx(14 / 20) and pooled.loc[
        "jola", "zeroshot_accuracy"
    ] == pytest.approx(4 / 20)
    assert pooled.loc["red", ["tasks", "items", "better", "worse"]].tolist() == [1, 10, 1, 0]
    items("t3", "zeroshot", [True] * 3)
    items("t3", "jola", [True] * 4)
    with pytest.raises(ValueError, match="t3: jola and zero-shot were scored on different test items"):
        report.pooled_vs_zeroshot(tmp_path)


def test_paired_score_differences_with_a_bootstrap_interval(tmp_path):
    """ROUGE-L per item: the mean difference, a seeded interval around it, and the items each way."""
    import pandas as pd

    def items(method: str, scores: list[float]) -> None:
        run = tmp_path / "nlg" / "runs" / "xsum" / method / "seed0"
        run.mkdir(parents=True)
        pd.DataFrame({"item": range(len(scores)), "rougeL": scores}).to_csv(run / "test_items.csv", index=False)

    items("jola", [30.0, 40.0, 50.0, 60.0])
    items("zeroshot", [10.0, 20.0, 50.0, 70.0])  # differences +20, +20, 0, -10
    items("red", [30.0, 40.0, 50.0, 60.0])  # identical: a zero-width interval
    paired = report.paired_score_differences(tmp_path).set_index("method")
    z = paired.loc["zeroshot"]
    assert (z["items"], z["difference"], z["items_higher"], z["items_lower"]) == (4, 7.5, 2, 1)
    assert -10.0 <= z["ci_low"] < 7.5 < z["ci_high"] <= 20.0
    assert paired.loc["red", ["difference", "ci_low", "ci_high"]].tolist() == [0.0, 0.0, 0.0]
    again = report.paired_score_differences(tmp_path).set_index("method")
    assert again.loc["zeroshot", "ci_low"] == z["ci_low"], "the resampling is seeded"
    assert "| xsum | zeroshot | 4 | +7.5 |" in "\n".join(report._paired_score_section(paired.reset_index()))


def test_jola_head_sets_across_tasks_and_seeds(tmp_path):
    """Open heads read back from saved edits (either gate open); runs with every gate open or none are left
    out; pairs are labelled by what they share, with overlap and chance from the set sizes."""
    import torch

    from jolalens import JolaConfig, JolaEdit

    model = tiny_model()  # 2 layers x 4 heads: N = 8

    def edit(group: str, task: str, seed: int, additive: list[int], multiplicative: list[int]) -> None:
        e = JolaEdit.for_model(model, JolaConfig(seed=seed))
        with torch.no_grad():
            for name, open_ in (("additive", additive), ("multiplicative", multiplicative)):
                alpha = torch.full((2, 4), -20.0)
                alpha.view(-1)[open_] = 20.0
                getattr(e, f"log_alpha_{name}").copy_(alpha)
        e.save(tmp_path / group / "runs" / task / "jola" / f"seed{seed}" / "edit")

    edit("main", "arc_easy", 0, [0, 1], [5])  # heads 0, 1, 5 (L0H0, L0H1, L1H1)
    edit("main", "arc_easy", 1, [0, 1], [])
    edit("nlu", "mmlu_law", 0, [0], [2, 3])
    edit("nlg", "xsum", 1, [], [1, 7])
    edit("main", "boolq", 0, list(range(8)), [])  # every head open: not a selection
    edit("main", "piqa", 0, [], [])  # nothing open
    runs = report.selective_jola_runs(tmp_path)
    assert sorted(runs) == [("arc_easy", 0), ("arc_easy", 1), ("mmlu_law", 0), ("xsum", 1)]
    assert runs[("arc_easy", 0)].nonzero().tolist() == [[0, 0], [0, 1], [1, 1]]
    assert report.open_heads(tmp_path / "main" / "runs" / "arc_easy" / "jola" / "seed0" / "edit") == {
        ("additive", 0, 0),
        ("additive", 0, 1),
        ("multiplicative", 1, 1),
    }
    pairs = report.head_set_pairs(runs).set_index(["run_a", "run_b"])
    row = pairs.loc[("arc_easy/seed0", "arc_easy/seed1")]
    assert row["pair"] == "same task, other seed"
    assert (row["k_a"], row["k_b"], row["overlap"]) == (3, 2, 2) and row["jaccard"] == pytest.approx(2 / 3)
    assert row["expected_overlap"] == pytest.approx(3 * 2 / 8)
    assert row["p"] == pytest.approx(3 / 28)  # P(overlap >= 2) = C(3,2) C(5,0) / C(8,2)
    assert pairs.loc[("arc_easy/seed0", "mmlu_law/seed0"), "pair"] == "other task, same seed (same start)"
    assert pairs.loc[("arc_easy/seed0", "xsum/seed1"), "pair"] == "other task, other seed"
    assert pairs.loc[("arc_easy/seed0", "xsum/seed1"), "overlap"] == 1  # L0H1
    assert len(pairs) == 6
    text = "\n".join(report._head_pairs_section(pairs.reset_index()))
    assert "| same task, other seed | 1 | 0.67 |" in text
    fig = report.head_count_figure(runs)
    assert fig.data[0].z[0][0] == 2 and fig.data[0].z[1][1] == 1, "seed 0: L0H0 open in both tasks, L1H1 in one"


def test_shared_heads_line_names_the_heads_open_in_most_tasks():
    import torch

    a = torch.zeros(2, 4, dtype=torch.bool)
    a[0, 1] = a[1, 3] = True
    b = torch.zeros(2, 4, dtype=torch.bool)
    b[0, 1] = True
    line = report._shared_heads_lines({("t1", 0): a, ("t2", 0): b, ("t3", 1): ~b}, top=2)[-1]
    assert "2 tasks: the heads open in the most tasks are L0H1 (2), L1H3 (1);" in line
    assert "67% of the open heads lie in layers 0-0, 33% in layers 1-1" in line


def test_baseline_seed_section_lists_only_methods_with_several_seeds():
    import pandas as pd

    base = {
        "task": "boolq",
        "label_prior_accuracy": 0.6,
        "minus_zeroshot": 0.002,
        "mcnemar_p": 1.0,
        "n_test": 500,
        "hyperparameters": '{"alpha": 5.0}',
        "top_label": "True",
        "top_label_share": 0.86,
    }
    cells = pd.DataFrame(
        [
            {**base, "method": "iti", "seed": 0, "accuracy": 0.622, "changed_vs_zeroshot": 478},
            {**base, "method": "iti", "seed": 1, "accuracy": 0.58, "changed_vs_zeroshot": 1},
            {**base, "method": "red", "seed": 0, "accuracy": 0.61, "changed_vs_zeroshot": 3},
            {**base, "method": "jola", "seed": 1, "accuracy": 0.63, "changed_vs_zeroshot": 9},
            {**base, "method": "jola", "seed": 0, "accuracy": 0.62, "changed_vs_zeroshot": 9},
        ]
    )
    gen = pd.DataFrame([{"task": "boolq", "method": "iti", "seed": 1, "accuracy": 0.01}])
    table = "\n".join(report._baseline_seed_section(cells, gen))
    assert '| iti | boolq | 0 | 62.2 (–) | +0.2 (p=1) | 478 / 500 | 60.0 | {"alpha": 5.0} | True 86% |' in table
    assert "| iti | boolq | 1 | 58.0 (1.0) |" in table
    assert "| red |" not in table, "one seed: nothing to compare"
    assert "| jola |" not in table, "JoLA has its own section"
    assert report._baseline_seed_section(cells[cells["seed"] == 0], gen) == []


def test_changed_answers_counts_differing_predictions_on_the_same_items():
    import pandas as pd

    a = pd.DataFrame({"item": range(4), "prediction": ["a", "b", "c", "d"]})
    b = pd.DataFrame({"item": range(4), "prediction": ["a", "c", "c", None]})
    assert report.changed_answers(a, b) == 2
    assert report.changed_answers(a, a) == 0
    with pytest.raises(ValueError, match="different test items"):
        report.changed_answers(a, b.iloc[:3])


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


def test_spaced_accuracy_reads_option_2_with_each_items_own_options():
    gen = pd.DataFrame(
        {
            "item": [0, 1, 2, 3],
            "answer": ["option2", "option1", "option1", "option2"],
            "output": ["The correct answer is option 2.", "option 1 or option 2", "option1", "I think so"],
        }
    )
    loglik = pd.DataFrame({"item": [0, 1, 2, 3], "choices": ["['option1', 'option2']"] * 4})
    assert report.spaced_accuracy(gen, loglik, "winogrande") == 0.5  # items 0 and 2; item 1 names two labels
    assert math.isnan(report.spaced_accuracy(gen, None, "winogrande"))
    bools = pd.DataFrame({"item": [0, 1], "answer": [True, False], "output": ["true", "False."]})
    assert (
        report.spaced_accuracy(bools, pd.DataFrame({"item": [0, 1], "choices": ["['true', 'false']"] * 2}), "boolq")
        == 1.0
    )
    table = pd.DataFrame(
        {
            "method": ["iti", "jola"],
            "task": ["winogrande"] * 2,
            "seed": [0, 0],
            "accuracy": [0.036, 0.52],
            "accuracy_spaced": [0.388, 0.52],
        }
    )
    lines = report._spaced_section(table)
    assert lines[-1] == "| iti | winogrande | 0 | 3.6 | 38.8 |" and not any("| jola |" in line for line in lines)


def test_multi_reference_rouge_scores_against_every_reference_of_the_input(tmp_path, monkeypatch):
    from jolalens.tasks.sources import CACHE_FORMAT

    monkeypatch.setenv("JOLALENS_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "tasks" / "e2e_nlg"
    cache.mkdir(parents=True)
    refs = {
        "name: A": ["A is a pub.", "There is a pub called A."],
        "name: B": ["B serves food.", "Food is served at B."],
    }
    test = [
        {"instruction": f"Describe.\n\n{i}", "answer": r, "meta": {"input": i}} for i, rs in refs.items() for r in rs
    ]
    (cache / "test.jsonl").write_text("".join(json.dumps(x) + "\n" for x in test))
    (cache / "train.jsonl").write_text(json.dumps(test[0]) + "\n")
    (cache / "source.json").write_text(json.dumps({"format": CACHE_FORMAT, "sizes": {"train": 1, "test": 4}}))
    from jolalens.tasks import load_task_splits

    order = load_task_splits("e2e_nlg", n_train=0, n_valid=0, n_test=4, download=False).test
    run = tmp_path / "grid" / "nlg" / "runs" / "e2e_nlg" / "red" / "seed0"
    run.mkdir(parents=True)
    # each output is the *other* reference of its input: poor against its own, perfect against all
    other = {r: next(x for x in refs[ex.meta["input"]] if x != r) for ex in order for r in [ex.answer]}
    pd.DataFrame(
        {"item": range(4), "answer": [ex.answer for ex in order], "prediction": [other[ex.answer] for ex in order]}
    ).to_csv(run / "test_items.csv", index=False)
    (run / "result.json").write_text(json.dumps({"score": 40.0, "n_test": 4}))
    table = report.multi_reference_rouge(tmp_path / "grid")
    assert table[["task", "method", "seed"]].values.tolist() == [["e2e_nlg", "red", 0]]
    assert (
        table["rougeL_all_references"].iloc[0] == pytest.approx(100.0) and table["references_per_item"].iloc[0] == 2.0
    )
    assert report._multi_reference_section(table)[-1] == "| e2e_nlg | red | 0 | 2.0 | 40.0 | 100.0 |"
    # a task with runs but no cached data is named, not dropped silently
    assert report.uncached_run_tasks(tmp_path / "grid") == []
    lost = tmp_path / "grid" / "nlg" / "runs" / "web_nlg" / "jola" / "seed0"
    lost.mkdir(parents=True)
    (lost / "result.json").write_text(json.dumps({"score": 30.0, "n_test": 4}))
    assert report.uncached_run_tasks(tmp_path / "grid") == ["web_nlg"]
    assert report.multi_reference_rouge(tmp_path / "grid")["task"].tolist() == ["e2e_nlg"]
    section = report._multi_reference_section(table, ["web_nlg"])
    assert any("Not scored on this machine: web_nlg" in line for line in section) and section[-1].startswith(
        "| e2e_nlg"
    )
    assert report._multi_reference_section(table.iloc[:0], ["web_nlg"])[-2].startswith("**Not scored")


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


def test_jola_against_every_seed_is_a_sign_test_over_cells():
    """Cells are matched by (task, seed); zero-shot's one run stands against every JoLA seed."""
    rows = [
        ("jola", "t1", 0, 0.30),
        ("jola", "t1", 1, 0.20),
        ("jola", "t2", 0, 0.50),
        ("jola", "t2", 1, 0.60),
        ("red", "t1", 0, 0.25),
        ("red", "t1", 1, 0.20),
        ("red", "t2", 0, 0.40),  # red lacks t2 seed 1
        ("zeroshot", "t1", 0, 0.10),
        ("zeroshot", "t2", 0, 0.70),
        ("jola_additive", "t1", 0, 0.9),
    ]
    cells = pd.DataFrame(rows, columns=["method", "task", "seed", "accuracy"])
    table = report.jola_against_every_seed(cells).set_index("method")
    assert set(table.index) == {"red", "zeroshot"}, "ablations are not baselines"
    assert table.loc["red", ["cells", "tasks", "seeds", "higher", "tie", "lower"]].tolist() == [3, 2, 2, 2, 1, 0]
    assert table.loc["red", "mean_difference"] == pytest.approx((0.05 + 0.0 + 0.10) / 3)
    assert table.loc["red", "sign_p"] == pytest.approx(sign_test_p(2, 0))
    assert table.loc["zeroshot", ["cells", "higher", "lower"]].tolist() == [4, 2, 2]
    assert table.loc["zeroshot", "method_accuracy"] == pytest.approx((0.1 + 0.1 + 0.7 + 0.7) / 4)
    text = "\n".join(report._jola_every_seed_section(report.jola_against_every_seed(cells)))
    assert table.loc["red", ["tasks_higher", "tasks_lower"]].tolist() == [2, 0]
    assert table.loc["zeroshot", ["tasks_higher", "tasks_lower"]].tolist() == [1, 1]  # t1 +0.15, t2 -0.15
    assert "| red | 3 (2, 2) | 33.3 | 28.3 | +5.0 | 2 / 1 / 0 | 0.5 | 2 / 0 | 0.5 |" in text
    assert report._jola_every_seed_section(report.jola_against_every_seed(cells[cells["seed"] == 0])) == []
    ablated = report.jola_against_every_seed(cells, ablations=True).set_index("method")
    assert list(ablated.index) == ["jola_additive"] and ablated.loc["jola_additive", ["cells", "lower"]].tolist() == [
        1,
        1,
    ]
    assert report._jola_every_seed_section(report.jola_against_every_seed(cells, ablations=True)) == [], "one seed only"


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


def test_head_pairs_by_family_groups_one_seeds_pairs_of_tasks():
    pairs = pd.DataFrame(
        [
            {
                "run_a": "xsum/seed0",
                "run_b": "web_nlg/seed0",
                "overlap": 10,
                "expected_overlap": 2.0,
                "jaccard": 0.4,
                "chance_jaccard": 0.05,
                "p": 1e-4,
            },
            {
                "run_a": "boolq/seed0",
                "run_b": "xsum/seed0",
                "overlap": 3,
                "expected_overlap": 2.0,
                "jaccard": 0.1,
                "chance_jaccard": 0.05,
                "p": 0.3,
            },
            {
                "run_a": "mmlu_law/seed0",
                "run_b": "siqa/seed0",
                "overlap": 4,
                "expected_overlap": 1.0,
                "jaccard": 0.2,
                "chance_jaccard": 0.05,
                "p": 0.01,
            },
            {
                "run_a": "siqa/seed0",
                "run_b": "boolq/seed0",
                "overlap": 6,
                "expected_overlap": 2.0,
                "jaccard": 0.3,
                "chance_jaccard": 0.1,
                "p": 0.02,
            },
            {
                "run_a": "siqa/seed0",
                "run_b": "siqa/seed2",
                "overlap": 9,
                "expected_overlap": 1.0,
                "jaccard": 0.5,
                "chance_jaccard": 0.1,
                "p": 1e-5,
            },
        ]
    )
    table = report.head_pairs_by_family(pairs).set_index("families")
    assert list(table.index) == ["GEM / GEM", "GEM / commonsense", "MMLU / commonsense", "commonsense / commonsense"]
    assert table.loc["GEM / GEM", ["pairs", "ratio", "above_chance"]].tolist() == [1, 5.0, 1]
    assert table.loc["commonsense / commonsense", "pairs"] == 1, "the seed-2 pair is left out"
    text = "\n".join(report._family_section(report.head_pairs_by_family(pairs)))
    assert "| GEM / commonsense | 1 | 0.10 | 0.05 | 1.50 | 0 |" in text
    assert report.head_pairs_by_family(pairs[pairs["run_b"].str.endswith("seed2")]).empty
    assert report.head_pairs_by_family(pd.DataFrame()).empty, "a grid with no selective JoLA run has no pairs"


def test_the_grids_methods_are_registered_and_its_ablations_are_jolas():
    grid.check_methods()  # raises SystemExit naming a method the registry lacks
    from jolalens.methods import METHODS

    assert set(grid.BASELINES) <= set(METHODS) and set(grid.DATASIZE_METHODS) <= set(METHODS)
