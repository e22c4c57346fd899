"""Full disks and unwritable outputs: one clear error before the long work, the old state
intact."""

from __future__ import annotations

import dataclasses
import errno
import shutil
from collections import namedtuple
from pathlib import Path

import pandas as pd
import pytest

import jolalens.atomic_dir
import jolalens.compare
import jolalens.run_records
import jolalens.tasks
from jolalens import TrainConfig
from jolalens.atomic_dir import DiskError, check_free_space, check_writable, preflight_output
from jolalens.compare import CompareConfig, run_compare
from jolalens.testing import choice_splits

from ._helpers import leftovers, snapshot


def test_unwritable_output_is_detected_by_really_writing(tmp_path, monkeypatch):
    def read_only(path, mode="r", *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(jolalens.atomic_dir, "open", read_only, raising=False)
    (tmp_path / "out").mkdir()  # an empty directory on a read-only file system passes an exists-check
    with pytest.raises(DiskError, match="Read-only file system.*choose another --out"):
        check_writable(tmp_path / "out")


@pytest.mark.skipif(shutil.os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_directory_really(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(DiskError):
            check_writable(parent / "out")
    finally:
        parent.chmod(0o755)


def test_free_space_check(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(jolalens.atomic_dir.shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskError, match="only 0.0 MiB free"):
        preflight_output(tmp_path / "out", needed_bytes=10_000)
    check_free_space(tmp_path / "out", needed_bytes=100)


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


def test_compare_failure_record_survives_a_full_disk(tiny, tmp_path, monkeypatch):
    """A run fails and the disk is full when its traceback is written: no 0-byte error.txt, the
    comparison goes on, and the failed run is retried next time."""
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)

    def crash(*a, **k):
        raise RuntimeError("fit crashed")

    spec = jolalens.compare.METHODS["red"]
    monkeypatch.setitem(
        jolalens.compare.METHODS,
        "red",
        dataclasses.replace(spec, fit=crash),
    )
    real = jolalens.run_records.atomic_path

    def full_for_errors(path):
        if Path(path).name == "error.txt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(jolalens.run_records, "atomic_path", full_for_errors)
    logs: list[str] = []
    results = run_compare(tiny, _config(), tmp_path / "cmp", log=logs.append)
    red = tmp_path / "cmp" / "runs" / "arc_easy" / "red" / "seed0"
    assert not (red / "error.txt").exists() and not (red / "result.json").exists()
    assert any("could not write" in line and "error.txt" in line for line in logs)
    assert list(results["method"]) == ["zeroshot"]  # the zero-shot run still finished
    assert (tmp_path / "cmp" / "results.csv").stat().st_size > 0


def test_tables_keep_their_last_good_version_on_a_full_disk(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)
    out = tmp_path / "cmp"
    run_compare(tiny, _config(), out, log=lambda _: None)
    tables = {name: (out / name).read_bytes() for name in ("results.csv", "summary.csv", "summary.md")}
    real = pd.DataFrame.to_csv

    def full(self, path=None, *a, **k):
        real(self, path, *a, **k)
        Path(path).write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(OSError, match="No space left"):
        jolalens.compare.write_tables(out)
    assert {name: (out / name).read_bytes() for name in tables} == tables
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_full_disk_during_export_keeps_old_export(tiny, tmp_path, monkeypatch):
    from jolalens import JolaConfig, JolaEdit
    from jolalens.merge import export_hf_checkpoint

    edit = JolaEdit.for_model(tiny, JolaConfig())
    out = export_hf_checkpoint(tiny, edit, tmp_path / "hf")
    before = snapshot(out)
    from jolalens.hf_view import hf_view

    view_cls = type(hf_view(tiny))

    def full(self, path, *a, **k):
        (Path(path) / "model.safetensors").write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(view_cls, "save_pretrained", full)
    with pytest.raises(DiskError, match="nothing there was changed"):
        export_hf_checkpoint(tiny, edit, out, overwrite=True)
    assert snapshot(out) == before and leftovers(tmp_path) == []
