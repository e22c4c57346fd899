"""Bad options and data: one line `jolalens: error: ...`, exit code 2, no traceback, nothing
written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import jolalens
import jolalens.atomic_dir
import jolalens.data
import jolalens.models
from jolalens import DataError, Example, JolaConfig, JolaEdit, TrainConfig
from jolalens.cli import main
from jolalens.compare import CompareConfig
from jolalens.data import read_jsonl, tokenize_example
from jolalens.locking import output_lock
from jolalens.validation import parse_layers

REPO = Path(__file__).resolve().parents[2]
GOOD = str(REPO / "tests" / "fixtures" / "tasks" / "arc_easy.jsonl")


def _jsonl(tmp_path: Path, name: str, lines: list[str | bytes]) -> str:
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return str(path)


OK = '{"instruction": "a", "answer": "b"}'
TRAIN_OPTIONS = [
    ["--epochs", "0"],
    ["--epochs", "-3"],
    ["--lr", "0"],
    ["--lr", "-1"],
    ["--lr", "nan"],
    ["--lr", "inf"],
    ["--lr", "1e39"],
    ["--lr", "1e3"],
    ["--batch-size", "0"],
    ["--layers", ""],
    ["--layers", " "],
    ["--layers", "a,b"],
    ["--layers", "1,,2"],
    ["--layers", "-1"],
    ["--layers", "0,0"],
    ["--max-length", "1"],
    ["--lam", "-1"],
]


@pytest.fixture
def tiny_cli(tiny, monkeypatch):
    """The CLI's model loader returns the tiny model (no embedded model needed)."""
    monkeypatch.setattr(jolalens.models, "load_model", lambda *a, **k: tiny)
    monkeypatch.setattr(jolalens, "load_model", lambda *a, **k: tiny)
    return tiny


def _bad_cases(tmp_path: Path, tiny) -> list[list[str]]:
    out = str(tmp_path / "run")
    cases = [["train", "--train", GOOD, "--valid", GOOD, "--out", out, *opt] for opt in TRAIN_OPTIONS]
    for lines in (
        [OK, b'{"instruction": "caf\xe9", "answer": "b"}'],  # latin-1, not UTF-8
        [OK, '{"instruction": "a", "answer": "b", "meta": {"references": "a string"}}'],
        [OK, '{"instruction": "a", "answer": "b", "meta": "a string"}'],
        [OK, '{"instruction": "a", "answer": "b", "choices": "abc"}'],
        ['{"instruction": "a", "answer": "b"'],
        ["[1, 2]"],
    ):
        path = _jsonl(tmp_path, f"bad{len(cases)}.jsonl", lines)
        cases.append(["train", "--train", path, "--valid", GOOD, "--out", out])
        cases.append(["eval", "--task", path])
    cases += [
        ["eval", "--task", GOOD, "--n-test", "-1"],
        ["eval", "--task", GOOD, "--n-test", "0"],
        ["eval", "--task", GOOD, "--batch-size", "0"],
        ["eval", "--task", GOOD, "--num-beams", "0"],
        ["compare", "--tasks", "arc_easy", "--out", str(tmp_path / "c"), "--n-test", "-1"],
        ["compare", "--tasks", "arc_easy", "--out", str(tmp_path / "c"), "--epochs", "0"],
        ["compare", "--tasks", "arc_easy", "--out", str(tmp_path / "c"), "--budget", "0"],
        ["compare", "--tasks", "arc_easy", "--out", str(tmp_path / "c"), "--n-train", "0"],
        ["compare", "--tasks", "arc_easy", "--out", str(tmp_path / "c"), "--methods", "nope"],
        ["train", "--task", "nope", "--out", out],
        ["export", "--edit", str(tmp_path / "missing"), "--out", str(tmp_path / "hf")],
    ]
    # damaged edits, for export and eval
    good = JolaEdit.for_model(tiny, JolaConfig(init_std=0.3)).save(tmp_path / "good_edit")
    for name, damage in (
        ("truncated", lambda d: (d / "jola_weights.safetensors").write_bytes(b"\x00" * 10)),
        (
            "truncated_no_checksum",
            lambda d: (
                _edit_config(d, lambda m: None),
                (d / "jola_weights.safetensors").write_bytes(b"\x08" + b"\x00" * 9),
            ),
        ),
        ("nomodel", lambda d: _edit_config(d, lambda m: m.pop("model"))),
        ("badversion", lambda d: _edit_config(d, lambda m: m.update(format_version="x"))),
        ("notjson", lambda d: (d / "jola_config.json").write_bytes(b"\xff{")),
    ):
        bad = tmp_path / f"edit_{name}"
        bad.mkdir()
        for f in good.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        damage(bad)
        cases.append(["export", "--edit", str(bad), "--out", str(tmp_path / "hf")])
        cases.append(["eval", "--task", GOOD, "--edit", str(bad)])
    return cases


def _edit_config(path: Path, change) -> None:
    meta = json.loads((path / "jola_config.json").read_text())
    change(meta)
    meta.pop("weights_sha256", None)
    (path / "jola_config.json").write_text(json.dumps(meta))


def test_cli_bad_inputs_are_one_line_errors(tmp_path, tiny_cli, capsys):
    cases = _bad_cases(tmp_path, tiny_cli)
    assert len(cases) > 40
    for argv in cases:
        code = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv, err)
        assert "Traceback" not in err and lines and lines[-1].startswith("jolalens: error: "), (
            argv,
            err,
        )
        assert len([line for line in lines if line.startswith("jolalens")]) == 1, (argv, err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "hf").exists()


def test_verbose_shows_the_traceback(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--train",
                GOOD,
                "--valid",
                GOOD,
                "--out",
                str(tmp_path / "r"),
                "--epochs",
                "0",
                "-v",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("jolalens: error: epochs must be")


def test_non_utf8_jsonl_names_file_and_line(tmp_path, capsys):
    path = _jsonl(tmp_path, "latin.jsonl", [OK, OK, b'{"instruction": "caf\xe9", "answer": "b"}'])
    assert main(["train", "--train", path, "--valid", GOOD, "--out", str(tmp_path / "r")]) == 2
    assert f"{path}:3: not UTF-8" in capsys.readouterr().err


def test_busy_and_read_only_outputs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep").write_text("x")
    with output_lock(out, "the other run"):
        assert main(["train", "--train", GOOD, "--valid", GOOD, "--out", str(out), "--overwrite"]) == 2
    assert "in use by pid" in capsys.readouterr().err and (out / "keep").read_text() == "x"

    def read_only(path, *a, **k):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(jolalens.atomic_dir, "open", read_only, raising=False)
    assert main(["train", "--train", GOOD, "--valid", GOOD, "--out", str(tmp_path / "new")]) == 2
    assert "Read-only file system" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_cli_subprocess_no_traceback(tmp_path):
    """The real entry point, out of process: a bad option is one line on stderr and exit code 2."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); from jolalens.cli import main; sys.exit(main(sys.argv[2:]))"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(REPO),
            "train",
            "--train",
            GOOD,
            "--valid",
            GOOD,
            "--out",
            str(tmp_path / "r"),
            "--lr",
            "nan",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("jolalens: error: lr must be a finite number")


# ---- the same rules through the Python API --------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [dict(epochs=0), dict(lr=float("nan")), dict(lr=1e3), dict(batch_size=-1), dict(epochs=2.5)],
)
def test_train_config_rejects(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("n_test", [0, -1])
def test_compare_config_rejects_n_test(n_test):
    with pytest.raises(ValueError, match="n_test"):
        CompareConfig(methods=("jola",), tasks=("arc_easy",), n_test=n_test)


def test_parse_layers():
    assert parse_layers(None) is None and parse_layers("3, 1") == (3, 1)
    for bad in ("", " ", "1,,2", "x", "-1", "2,2"):
        with pytest.raises(ValueError, match="--layers"):
            parse_layers(bad)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"instruction": "a", "answer": "b", "meta": {"references": "abc"}}, "meta.references"),
        ({"instruction": "a", "answer": "b", "meta": {"references": ["a", 1]}}, "meta.references"),
        ({"instruction": "a", "answer": "b", "meta": "abc"}, "'meta' must be a JSON object"),
    ],
)
def test_jsonl_field_types(tmp_path, record, message):
    with pytest.raises(DataError, match=message):
        read_jsonl(_jsonl(tmp_path, "x.jsonl", [json.dumps(record)]))


def test_over_long_prompt_warns_with_the_dropped_count(tiny, caplog, monkeypatch):
    monkeypatch.setattr(jolalens.data, "_CUT_PROMPTS", 0)
    ex = Example("x" * 500, "b")
    with caplog.at_level("WARNING", logger="jolalens.data"):
        ids, labels = tokenize_example(tiny.tokenizer, ex, max_length=64)
    assert len(ids) == 64 and "dropped its first" in caplog.text and "room for 63" in caplog.text
    dropped = int(caplog.text.split("dropped its first ")[1].split()[0])
    full = len(tiny.tokenizer(jolalens.data.format_prompt(ex.instruction)).input_ids)
    assert dropped == full - (64 - 1)


def test_eval_out_checked_before_the_work_and_written_whole(tmp_path, tiny_cli, capsys, monkeypatch):
    path = _jsonl(
        tmp_path,
        "mc.jsonl",
        ['{"instruction": "pick a", "answer": "a", "choices": ["a", "b"]}'] * 3,
    )
    assert main(["eval", "--task", path, "--out", str(tmp_path / "ev"), "--batch-size", "2"]) == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n"] == 3
    capsys.readouterr()

    def read_only(p, *a, **k):
        raise OSError(30, "Read-only file system", str(p))

    evaluated = []
    monkeypatch.setattr(jolalens.atomic_dir, "open", read_only, raising=False)
    monkeypatch.setattr("jolalens.evaluate.evaluate", lambda *a, **k: evaluated.append(1))
    assert main(["eval", "--task", path, "--out", str(tmp_path / "ev2")]) == 2
    assert "Read-only file system" in capsys.readouterr().err and not evaluated
