"""The same faults on a real small tmpfs (full, then read-only), where the machine allows
mounting one."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from jolalens import load_edit
from jolalens.atomic_dir import DiskError, check_writable, preflight_output

from ._helpers import leftovers, snapshot, train_tiny


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs mounted at ``tmp_path / 'fs'`` (skipped where mounting is not permitted)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _fill(mnt: Path) -> None:
    """Write a filler file until the file system is full."""
    with pytest.raises(OSError) as info, open(mnt / "filler", "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 4096)
    assert info.value.errno == errno.ENOSPC


def test_full_then_read_only_disk(tiny, small_fs):
    result = train_tiny(tiny)
    run = result.save(small_fs / "run")
    before = snapshot(run)
    _fill(small_fs)
    with pytest.raises(DiskError, match="No space left on device.*free some disk space"):
        preflight_output(small_fs / "run", needed_bytes=64 * 1024)
    with pytest.raises(DiskError, match="No space left on device"):
        result.save(run, overwrite=True)
    assert snapshot(run) == before and leftovers(small_fs) == []
    assert load_edit(run / "edit", tiny).method == "jola"

    (small_fs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(DiskError, match="Read-only file system"):
        check_writable(small_fs / "run")
    with pytest.raises(DiskError):
        result.save(run, overwrite=True)
    assert snapshot(run) == before
