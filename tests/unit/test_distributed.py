"""Data-parallel training: sharding rules, and two gloo ranks under ``accelerate launch``
against one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jolalens.cli import main
from jolalens.distributed import FAULT_ENV, DataParallel

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_dp_worker.py")


def _group(rank: int, world: int) -> DataParallel:
    return DataParallel(rank=rank, world_size=world, device=torch.device("cpu"))


@pytest.mark.parametrize("n,world", [(9, 2), (4, 3), (1, 2), (7, 4)])
def test_shards_cover_the_batch_once_in_order(n, world):
    rows = list(range(n))
    shards = [_group(r, world).shard(rows) for r in range(world)]
    assert sum(shards, []) == rows
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_an_empty_shard_runs_one_zero_weighted_row():
    assert _group(1, 2).shard_for_step(["x"]) == (["x"], 0.0)
    assert _group(0, 2).shard_for_step(["x"]) == (["x"], 1.0)


def test_rank_outside_the_group_is_refused():
    with pytest.raises(ValueError, match="rank must be in"):
        _group(2, 2)


def test_cli_refuses_a_multi_process_launch_without_distributed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["train", "--task", "piqa", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "add --distributed" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _launch(out: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    pytest.importorskip("accelerate")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(WORKER),
        str(out),
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_train_the_same_edits_as_one_process(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    try:
        from _dp_worker import train_all
    finally:
        sys.path.remove(str(WORKER.parent))
    proc = _launch(tmp_path / "dp.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    parallel = torch.load(tmp_path / "dp.pt")
    single = train_all(None)
    for method in ("jola", "bitfit"):
        assert parallel[method]["val_ce"] == pytest.approx(single[method]["val_ce"], abs=1e-5)
        assert parallel[method]["train_ce"] == pytest.approx(single[method]["train_ce"], abs=1e-5)
        for name, value in single[method]["state"].items():
            torch.testing.assert_close(parallel[method]["state"][name], value, atol=2e-5, rtol=1e-4)
    assert max(float(v.abs().max()) for v in single["bitfit"]["state"].values()) > 1e-3  # zero-initialised: it trained


def test_a_failing_rank_stops_every_rank_and_saves_nothing(tmp_path):
    proc = _launch(tmp_path / "dp.pt", {FAULT_ENV: "1:2"})
    assert proc.returncode != 0
    assert "training step 2 failed on rank(s) [1]" in proc.stderr
    assert "fault injected" in proc.stderr
    assert not (tmp_path / "dp.pt").exists()
