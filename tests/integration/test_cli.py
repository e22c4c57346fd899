"""The command line end to end on the embedded model, with a tiny budget."""

import json
import shutil

import pytest

from jolalens.cli import main

pytestmark = pytest.mark.integration

FIXTURE = "tests/fixtures/tasks/arc_easy.jsonl"


def test_train_figures_export(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--train", FIXTURE, "--valid", FIXTURE, "--out", str(run), "--epochs", "1",
                 "--batch-size", "3", "--no-progress"])
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
