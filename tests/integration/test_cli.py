"""The command line end to end on the embedded model, with a tiny budget."""

import json
import shutil

import pytest

from jolalens.cli import main

pytestmark = pytest.mark.integration

FIXTURE = "tests/fixtures/tasks/arc_easy.jsonl"


def test_train_figures_export(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--train",
            FIXTURE,
            "--valid",
            FIXTURE,
            "--out",
            str(run),
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "val CE" in out and "closed gates" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["trainable_parameters"] == 30 * 9 * (2 * 64 + 2)
    assert (run / "edit" / "jola_config.json").is_file() and (run / "history.csv").is_file()

    assert main(["export", "--edit", str(run / "edit"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()

    if shutil.which("chromium") or shutil.which("chromium-browser"):
        assert main(["figures", "--run", str(run), "--out", str(tmp_path / "fig")]) == 0
        assert list((tmp_path / "fig").glob("*.png"))


def test_train_refuses_existing_output_before_loading(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    code = main(["train", "--train", FIXTURE, "--valid", FIXTURE, "--out", str(tmp_path / "run")])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


def test_train_reports_malformed_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "answer": "b"}\n{"instruction": "a"}\n')
    code = main(["train", "--train", str(bad), "--valid", str(bad), "--out", str(tmp_path / "r")])
    assert code == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_train_needs_data(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "--task" in capsys.readouterr().err


def test_compare_runs_every_method_on_a_commonsense_task(tmp_path, capsys):
    """The issue's bar: `jolalens compare` runs all methods on the embedded model and writes
    the table (a tiny budget here; benchmarks/ holds the real runs)."""
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--tasks",
        "arc_easy",
        "--out",
        str(out),
        "--n-train",
        "8",
        "--n-valid",
        "4",
        "--n-test",
        "8",
        "--epochs",
        "1",
        "--budget",
        "1",
        "--warmup-steps",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 0
    table = (out / "summary.md").read_text()
    for method in ("jola", "iti", "red", "lofit", "lora", "bitfit", "zeroshot"):
        assert f"| {method} |" in table
    import pandas as pd

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 7 and (results["status"] == "done").all() and (results["n_test"] == 8).all()
    capsys.readouterr()
    assert main(argv) == 0  # resumes: nothing left to run
    assert capsys.readouterr().out.count("skip ") == 7


def test_compare_unknown_task_fails_before_loading(tmp_path, capsys):
    assert main(["compare", "--tasks", "nope", "--out", str(tmp_path / "c")]) == 2
    assert "Unknown task" in capsys.readouterr().err
