"""Atomic writes: concurrent writers of one file (the grid's workers sharing the task cache)."""

import multiprocessing as mp

import pytest

from jolalens import Example, read_jsonl, write_jsonl
from jolalens.fileio import atomic_path


def test_interleaved_writers_of_one_path_both_succeed(tmp_path):
    # A shared ``<name>.tmp`` made the second rename fail with FileNotFoundError (found when
    # two grid workers converted BoolQ's cache at the same moment).
    path = tmp_path / "d.txt"
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert path.read_text() == "first"  # the outer block finished last
    assert [p.name for p in tmp_path.iterdir()] == ["d.txt"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["d.txt"]


def _write_many(path: str, start: int) -> None:
    for i in range(30):
        write_jsonl([Example(f"q{start + i}", "a")], path)


def test_processes_writing_one_jsonl_at_once(tmp_path):
    path = tmp_path / "train.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(path), k * 100)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(read_jsonl(path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]
