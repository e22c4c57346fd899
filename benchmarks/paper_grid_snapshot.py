"""Snapshots of a paper-grid run: what it finished, packed into tarballs a lent machine can send back."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

__all__ = ["KEEP_EDIT_BYTES", "SNAPSHOT_MAX_PARTS", "SNAPSHOT_PART_BYTES", "file_stamps", "snapshot"]

KEEP_EDIT_BYTES = 300_000  # edits that come back from a GPU machine and are committed


def _keep(path: Path) -> bool:
    """Results, logs and edits under 300 kB travel: JoLA's, ITI's, LoFiT's and RED's, not BitFit's
    (620 kB) or LoRA's (1.8 MB), which are scored with both protocols where they were trained."""
    if path.name.endswith(".tmp"):
        return False
    return path.stat().st_size < (KEEP_EDIT_BYTES if path.suffix == ".safetensors" else 4_000_000)


SNAPSHOT_PART_BYTES = 14 * 2**20  # the lease tool returns files of at most 16 MiB each ...
SNAPSHOT_MAX_PARTS = 7  # ... and at most 8 files: the parts and stage2.sh's grid.log


def file_stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``out``, by relative path.

    Taken when a run starts, it names what the machine already had (the committed results), which
    a snapshot need not send back."""
    stamps = {}
    for path in out.rglob("*"):
        if path.is_file():
            stat = path.stat()
            stamps[str(path.relative_to(out))] = (stat.st_size, stat.st_mtime_ns)
    return stamps


def snapshot(out: Path, dest: Path, since: dict[str, tuple[int, int]] | None = None) -> list[Path]:
    """Tarballs ``results-01.tgz``, ``results-02.tgz``, ... of what finished since ``since`` was taken.

    Only new or changed files are packed, in parts of at most ``SNAPSHOT_PART_BYTES`` (a lease
    returns files of at most 16 MiB: a single tarball of every result outgrew that on 2026-11-28
    and the run's results were lost). Runs without ``result.json`` are left out (but for an
    ``error.txt``): the grid redoes them anyway. Returns the parts written."""
    dest.mkdir(parents=True, exist_ok=True)
    since = since or {}
    members: list[tuple[Path, int]] = []  # with the size, read once
    for group in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "claims"):
        unfinished = {r for r in group.glob("runs/*/*/seed*") if not (r / "result.json").is_file()}
        for path in sorted(group.rglob("*")):
            if not (path.is_file() and _keep(path)):
                continue
            if path.name != "error.txt" and unfinished.intersection(path.parents):
                continue  # a run the deadline cut short is redone from scratch; only its error comes back
            stat = path.stat()
            if since.get(str(path.relative_to(out))) == (stat.st_size, stat.st_mtime_ns):
                continue  # the machine had it when the run started
            members.append((path, stat.st_size))
    parts: list[list[Path]] = [[]]
    size = 0
    for path, file_size in members:
        cost = file_size + 1024  # the tar header and padding, rounded up
        if parts[-1] and size + cost > SNAPSHOT_PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(path)
        size += cost
    if len(parts) > SNAPSHOT_MAX_PARTS:
        print(
            f"snapshot: {len(parts)} parts of {SNAPSHOT_PART_BYTES >> 20} MiB exceed the {SNAPSHOT_MAX_PARTS} "
            "files a lease returns; the last ones will not come back (run fewer cells per call)",
            file=sys.stderr,
        )
    written = []
    for i, part in enumerate(parts, start=1):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in part:
                tar.add(path, arcname=str(path.relative_to(out)))
        target = dest / f"results-{i:02d}.tgz"
        tmp = dest / f".{target.name}.tmp"
        tmp.write_bytes(buf.getvalue())
        tmp.replace(target)
        written.append(target)
    for stale in set(dest.glob("results-*.tgz")) - set(written):
        stale.unlink()  # a part left from an earlier snapshot with more parts
    return written
