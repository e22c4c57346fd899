"""The #7 grid's queue: every cell once, the main table's seed 0 first, exclusive claims, and
snapshots that keep results but leave the large baseline weights behind."""

import importlib.util
import sys
import tarfile
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("paper_grid", Path(__file__).parents[2] / "benchmarks" / "paper_grid.py")
grid = importlib.util.module_from_spec(_spec)
sys.modules["paper_grid"] = grid  # dataclasses look their module up there
_spec.loader.exec_module(grid)


def test_plan_has_every_cell_once_and_main_seed0_first():
    cells = grid.plan()
    assert len({c.key for c in cells}) == len(cells)
    first = cells[: len(grid.BASELINES) * len(grid.COMMONSENSE)]
    assert {(c.group, c.seed) for c in first} == {("main", 0)}
    assert {c.method for c in first} == set(grid.BASELINES) and {c.task for c in first} == set(grid.COMMONSENSE)
    assert {c.group for c in cells} >= {"main", "gen", "nlu", "nlg", "datasize_n1000"}


@pytest.mark.parametrize("group", ["main", "nlu", "nlg", "datasize_n50", "datasize_n1000"])
def test_group_configs_follow_the_paper_sizes(group):
    cfg = grid.group_config(group)
    assert (cfg.n_valid, cfg.n_test, cfg.budget, cfg.train.epochs) == (200, 500, 2, 20)
    assert cfg.n_train == (int(group.removeprefix("datasize_n")) if group.startswith("datasize") else 200)
    assert cfg.protocol.value == ("gen" if group == "nlg" else "loglik")


def test_claims_are_exclusive_and_rescoring_waits_for_its_run(tmp_path):
    (tmp_path / "claims").mkdir()
    cell = grid.Cell("main", "arc_easy", "jola", 0)
    assert grid._claim(cell, tmp_path, 0) and not grid._claim(cell, tmp_path, 1)
    gen = grid.Cell("gen", "arc_easy", "jola", 0)
    assert not grid._ready(gen, tmp_path)
    cell.run_dir(tmp_path).mkdir(parents=True)
    (cell.run_dir(tmp_path) / "result.json").write_text("{}")
    assert grid._ready(gen, tmp_path) and grid._done(cell, tmp_path) and not grid._done(gen, tmp_path)


def test_snapshot_keeps_results_and_head_edits_only(tmp_path):
    out = tmp_path / "grid"
    for method, size in (("jola", 10), ("lora", 10), ("bitfit", 2_000_000)):
        edit = out / "main" / "runs" / "arc_easy" / method / "seed0" / "edit"
        edit.mkdir(parents=True)
        (edit / "weights.safetensors").write_bytes(b"x" * size)
        (edit.parent / "result.json").write_text("{}")
    (out / "logs").mkdir()
    (out / "logs" / "worker0.log").write_text("ok")
    grid.snapshot(out, tmp_path / "snap")
    with tarfile.open(tmp_path / "snap" / "main.tgz") as tar:
        names = set(tar.getnames())
    assert "main/runs/arc_easy/jola/seed0/edit/weights.safetensors" in names
    assert not any("lora/seed0/edit" in n or "bitfit/seed0/edit" in n for n in names)
    assert {f"main/runs/arc_easy/{m}/seed0/result.json" for m in ("jola", "lora", "bitfit")} <= names
    with tarfile.open(tmp_path / "snap" / "rest.tgz") as tar:
        assert tar.getnames() == ["logs/worker0.log"]
