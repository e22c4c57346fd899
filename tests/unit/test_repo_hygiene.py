"""The repository is the product: raw run outputs never enter git, and tools write under runs/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _tracked() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return out.stdout.splitlines()


def test_no_raw_run_outputs_are_tracked():
    raw = [
        p
        for p in _tracked()
        if p.startswith("benchmarks/results/")
        and ("/runs/" in p or p.endswith((".safetensors", ".csv.gz")) or "/points/" in p)
    ]
    assert raw == [], f"raw run outputs are tracked: {raw[:5]}"


def test_raw_run_outputs_would_be_ignored():
    paths = [
        "runs/demo/edit/jola_weights.safetensors",
        "benchmarks/results/x/runs/a/result.json",
        "benchmarks/results/x/edit.safetensors",
        "benchmarks/results/x/items.csv.gz",
    ]
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", *paths], capture_output=True, text=True
    ).stdout.split()
    assert ignored == paths


def test_the_demo_writes_only_where_git_ignores():
    """`make demo` must leave `git status` clean: every default output path is git-ignored."""
    import inspect

    import jolalens.demo as demo

    defaults = inspect.signature(demo.run_demo).parameters
    paths = [str(defaults[name].default) + "/x" for name in ("run_dir", "figures_dir")]
    _tracked()  # skips without git
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", *paths], capture_output=True, text=True
    ).stdout.split()
    assert ignored == paths
