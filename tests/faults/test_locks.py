"""One writer per output directory: a second process is refused by name; a dead holder's
lock is free."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import jolalens.tasks
from jolalens import TrainConfig
from jolalens.compare import CompareConfig, run_compare
from jolalens.locking import LockError, lock_path, output_lock
from jolalens.testing import choice_splits

from ._helpers import snapshot

REPO = Path(__file__).resolve().parents[2]

_HOLDER = textwrap.dedent("""
    import sys, time, pathlib
    sys.path.insert(0, {repo!r})
    from jolalens.locking import output_lock
    with output_lock(sys.argv[1], "holder test", shared=sys.argv[3] == "shared"):
        pathlib.Path(sys.argv[2]).write_text("1")
        time.sleep(60)
""")


def _hold(tmp_path: Path, target: Path, mode: str = "exclusive") -> subprocess.Popen:
    """Another process holding the lock of ``target`` until killed."""
    script, ready = tmp_path / "hold.py", tmp_path / f"ready-{target.name}"
    script.write_text(_HOLDER.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), str(target), str(ready), mode], cwd=REPO)
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    return proc


@pytest.fixture
def held(tmp_path):
    """Another process holding the lock of ``tmp_path / 'cmp'`` (yields the output and its pid)."""
    proc = _hold(tmp_path, tmp_path / "cmp")
    yield tmp_path / "cmp", proc.pid
    proc.kill()
    proc.wait(10)


def _config():
    train = TrainConfig(epochs=1, batch_size=4, warmup_steps=1, progress=False, max_length=64)
    return CompareConfig(
        methods=("zeroshot", "red"),
        tasks=("arc_easy",),
        n_train=6,
        n_valid=4,
        n_test=4,
        budget=1,
        train=train,
    )


def test_second_compare_refused_and_first_ones_work_kept(tiny, tmp_path, held, monkeypatch):
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)
    out, pid = held
    out.mkdir()
    (out / "keep.txt").write_text("finished work")
    before = snapshot(out)
    with pytest.raises(LockError, match=rf"in use by pid {pid} on {socket.gethostname()}.*holder test"):
        run_compare(tiny, _config(), out, log=lambda _: None)
    assert snapshot(out) == before


def test_lock_is_free_after_the_holder_dies(tmp_path, held):
    out, pid = held
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    with output_lock(out) as path:  # the kernel dropped the dead holder's flock
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_stale_lock_file_of_a_dead_pid_is_recovered(tmp_path, caplog):
    path = lock_path(tmp_path / "out")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0, "command": "x"}))
    with caplog.at_level("WARNING"), output_lock(tmp_path / "out"):
        pass
    assert "stale lock" in caplog.text


def test_compare_runs_under_the_lock_then_releases_it(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)
    results = run_compare(tiny, _config(), tmp_path / "cmp", log=lambda _: None)
    assert (results["status"] == "done").all()
    with output_lock(tmp_path / "cmp"):  # released after the run
        pass
    assert not (tmp_path / "cmp" / ".jolalens.lock").exists()  # the lock is a sibling, not in the results tree


def test_exclusive_compare_refused_beside_cooperating_workers(tiny, tmp_path, monkeypatch):
    """`jolalens compare` (exclusive) is refused while a cooperating worker shares the directory."""
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)
    proc = _hold(tmp_path, tmp_path / "cmp", "shared")
    try:
        with pytest.raises(LockError, match="in use by pid"):
            run_compare(tiny, _config(), tmp_path / "cmp", log=lambda _: None, exclusive=True)
    finally:
        proc.kill()
        proc.wait(10)


def test_cooperating_workers_skip_a_run_another_one_holds(tiny, tmp_path, monkeypatch):
    """The issue's race: a second process must not clean up (delete) a run the first works on."""
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)
    out = tmp_path / "cmp"
    run_compare(tiny, _config(), out, log=lambda _: None)
    red = out / "runs" / "arc_easy" / "red" / "seed0"
    (red / "result.json").unlink()  # as if the first worker were still on it, its edit written
    before = snapshot(red)
    proc = _hold(tmp_path, red)
    try:
        logs: list[str] = []
        run_compare(tiny, _config(), out, log=logs.append)
    finally:
        proc.kill()
        proc.wait(10)
    assert "skip arc_easy/red/seed0: running in another process" in logs
    assert snapshot(red) == before  # its edit/ and search.csv were not deleted as a "crashed attempt"
