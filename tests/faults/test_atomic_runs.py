"""Atomic runs: a failed or killed save never leaves a mix; --overwrite keeps the old run
until the new one is whole."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import jolalens.edit_io
from jolalens import load_edit
from jolalens.atomic_dir import COMPLETE_MARKER, DiskError, atomic_dir, is_complete
from jolalens.errors import EditLoadError

from ._helpers import leftovers, snapshot, train_tiny

REPO = Path(__file__).resolve().parents[2]


def test_run_dir_has_marker_and_loads(tiny, tmp_path):
    run = train_tiny(tiny).save(tmp_path / "run")
    assert is_complete(run) and (run / "summary.json").is_file()
    assert load_edit(run / "edit", tiny).method == "jola"
    assert leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_old_run(tiny, tmp_path, monkeypatch):
    result = train_tiny(tiny)
    run = result.save(tmp_path / "run")
    before = snapshot(run)

    def broken_save(obj, path, *a, **k):
        Path(path).write_bytes(b"half")  # a partial file, then the failure
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        result.save(run, overwrite=True)
    assert snapshot(run) == before
    assert leftovers(tmp_path) == []


def test_full_disk_during_edit_save_is_one_clear_error(tiny, tmp_path, monkeypatch):
    result = train_tiny(tiny)
    run = result.save(tmp_path / "run")
    before = snapshot(run)

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jolalens.edit_io, "save_file", full)
    with pytest.raises(DiskError, match="No space left on device.*nothing there was changed"):
        result.save(run, overwrite=True)
    assert snapshot(run) == before and leftovers(tmp_path) == []


def test_existing_output_refused_without_overwrite(tiny, tmp_path):
    run = train_tiny(tiny).save(tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(FileExistsError, match="overwrite"):
        train_tiny(tiny).save(run)
    assert snapshot(run) == before


def test_atomic_dir_exception_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "x") as tmp:
        (tmp / "a").write_text("a")
        raise RuntimeError("boom")
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []
    with atomic_dir(tmp_path / "x") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "x" / COMPLETE_MARKER).is_file()


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time, pathlib, torch
    sys.path[:0] = [{repo!r}, {tests!r}]  # this checkout's jolalens, not the installed one
    import jolalens
    assert jolalens.__file__.startswith({repo!r}), jolalens.__file__
    from jolalens.testing import tiny_model
    from faults._helpers import train_tiny, FAST
    from dataclasses import replace
    out, flags, phase = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
    model = tiny_model(seed=0)
    train_tiny(model).save(out)
    (flags / "saved").write_text("1")
    if phase == "save":
        original = torch.save
        def slow_save(obj, path, *a, **k):
            original(obj, path, *a, **k)
            (flags / "in_save").write_text("1")
            time.sleep(60)
        torch.save = slow_save
        train_tiny(model).save(out, overwrite=True)
    else:
        (flags / "in_training").write_text("1")
        train_tiny(model, replace(FAST, epochs=10000, patience=10000)).save(out, overwrite=True)
""")


@pytest.mark.parametrize("phase", ["save", "training"])
def test_kill_9_keeps_the_previous_run(tmp_path, phase):
    out, flags = tmp_path / "run", tmp_path / "flags"
    flags.mkdir()
    script = tmp_path / "job.py"
    script.write_text(_KILL_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(flags), phase],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 240
        wanted = flags / ("in_save" if phase == "save" else "in_training")
        while not wanted.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the subprocess never got there"
            time.sleep(0.05)
        before = snapshot(out)
        time.sleep(0.5 if phase == "training" else 0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert snapshot(out) == before and is_complete(out)
    from jolalens.testing import tiny_model

    assert load_edit(out / "edit", tiny_model(seed=0)).method == "jola"
    # the killed writer's temporary sibling goes away with the next write of that output
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "x").write_text("x")
    assert leftovers(tmp_path) == []


def test_load_refuses_truncated_weights(tiny, tmp_path):
    run = train_tiny(tiny).save(tmp_path / "run")
    weights = run / "edit" / "jola_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(EditLoadError, match="checksum"):
        load_edit(run / "edit", tiny)
    import json

    cfg = run / "edit" / "jola_config.json"
    meta = json.loads(cfg.read_text())
    del meta["weights_sha256"]  # as an edit saved before checksums
    cfg.write_text(json.dumps(meta))
    with pytest.raises(EditLoadError, match="not a readable safetensors file"):
        load_edit(run / "edit", tiny)


def test_killed_between_the_two_renames_restores_the_old_directory(tmp_path):
    """The one window where ``final`` is missing: the next write of it puts the old one back."""
    with atomic_dir(tmp_path / "x") as tmp:
        (tmp / "a").write_text("old")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.rename(tmp_path / "x", tmp_path / f".x.old-{dead.pid}-abcdef12")  # as a writer killed mid-replace leaves it
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "x", overwrite=True):
        raise RuntimeError("this write fails too")
    assert (tmp_path / "x" / "a").read_text() == "old" and leftovers(tmp_path) == []
