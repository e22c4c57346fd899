"""Damaged points, results, configs and weights, and NaN edits: detected, named, and
recomputed or refused."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import jolalens.tasks
from jolalens import JolaConfig, JolaEdit, TrainConfig, TrainingError, load_edit
from jolalens.compare import CompareConfig, collect, run_compare
from jolalens.errors import EditLoadError, JolaError
from jolalens.merge import export_hf_checkpoint
from jolalens.testing import choice_splits

from ._helpers import FAST, data, snapshot, train_tiny

RUN = ("runs", "arc_easy", "red", "seed0")


def _config(budget=1):
    train = TrainConfig(epochs=1, batch_size=4, warmup_steps=1, progress=False, max_length=64)
    return CompareConfig(
        methods=("red",),
        tasks=("arc_easy",),
        n_train=6,
        n_valid=4,
        n_test=4,
        budget=budget,
        train=train,
    )


@pytest.fixture
def patched(monkeypatch):
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)


def test_corrupt_result_json_is_reported_and_recomputed(tiny, tmp_path, patched):
    out = tmp_path / "cmp"
    first = run_compare(tiny, _config(), out, log=lambda _: None)
    result = out.joinpath(*RUN, "result.json")
    result.write_text('{"task": "arc_easy", "sco')  # truncated by a full disk
    assert list(collect(out)["status"]) == ["failed"]  # later reads do not crash
    logs: list[str] = []
    again = run_compare(tiny, _config(), out, log=logs.append)
    assert any("damaged record" in line and str(result) in line for line in logs)
    assert json.loads(result.read_text())["score"] == first["score"].iloc[0]  # recomputed, same seed, same score
    assert list(again["status"]) == ["done"]


def test_damaged_kept_point_is_refitted(tiny, tmp_path, patched, monkeypatch):
    """A point kept by an interrupted attempt is damaged: reported with its path, refitted."""
    out = tmp_path / "cmp"
    import jolalens.compare as compare

    calls = {"n": 0}
    real_eval = compare.evaluate

    def interrupted(*a, **k):  # the first attempt dies after both points were kept
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real_eval(*a, **k)

    monkeypatch.setattr(compare, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_compare(tiny, _config(budget=2), out, log=lambda _: None)
    points = out.joinpath(*RUN, "points")
    (points / "point0" / "point.json").write_text("{not json")
    weights = points / "point1" / "edit" / "jola_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:30])
    logs: list[str] = []
    results = run_compare(tiny, _config(budget=2), out, log=logs.append)
    assert list(results["status"]) == ["done"]
    assert any("damaged record" in line and "point0" in line for line in logs)
    assert any("damaged kept point" in line and "point1" in line for line in logs)
    assert "resumed_points" not in json.loads(out.joinpath(*RUN, "result.json").read_text())


def test_corrupt_compare_stamp_is_a_clear_error(tiny, tmp_path, patched):
    out = tmp_path / "cmp"
    run_compare(tiny, _config(), out, log=lambda _: None)
    (out / "compare_config.json").write_bytes(b"\xff\xfe garbage")
    before = snapshot(out)
    with pytest.raises(JolaError, match="compare_config.json is damaged"):
        run_compare(tiny, _config(), out, log=lambda _: None)
    assert snapshot(out) == before


def _saved(tiny, tmp_path):
    edit = JolaEdit.for_model(tiny, JolaConfig(init_std=0.3))
    return edit.save(tmp_path / "e")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("model"), 'no "model" block'),
        (lambda m: m.update(format_version="1"), "format_version must be a non-negative integer"),
        (lambda m: m.update(format_version=99), "newer than this jolalens"),
        (lambda m: m.update(config="both"), '"config" must be a JSON object'),
    ],
)
def test_damaged_configs_refused(tiny, tmp_path, change, message):
    path = _saved(tiny, tmp_path)
    meta = json.loads((path / "jola_config.json").read_text())
    change(meta)
    (path / "jola_config.json").write_text(json.dumps(meta))
    before = snapshot(path)
    with pytest.raises(EditLoadError, match=message):
        load_edit(path, tiny)
    assert snapshot(path) == before


def test_nan_weights_refused_at_load_save_and_export(tiny, tmp_path):
    path = _saved(tiny, tmp_path)
    weights = load_file(str(path / "jola_weights.safetensors"))
    name = next(iter(weights))
    weights[name][0] = math.nan
    save_file(weights, str(path / "jola_weights.safetensors"))
    meta = json.loads((path / "jola_config.json").read_text())
    del meta["weights_sha256"]  # hand-made: no checksum to catch it first
    (path / "jola_config.json").write_text(json.dumps(meta))
    with pytest.raises(EditLoadError, match="NaN/inf"):
        load_edit(path, tiny)

    edit = JolaEdit.for_model(tiny, JolaConfig(init_std=0.3))
    with torch.no_grad():
        edit.additive.view(-1)[0] = math.inf
    with pytest.raises(EditLoadError, match="NaN/inf"):
        edit.save(tmp_path / "nan")
    with pytest.raises(EditLoadError, match="refusing to export"):
        export_hf_checkpoint(tiny, edit, tmp_path / "hf")
    assert not (tmp_path / "nan").exists() and not (tmp_path / "hf").exists()


@pytest.mark.parametrize("poison_step, message", [(1, "non-finite loss"), (2, "never finite.*nothing was saved")])
def test_training_that_ends_in_nan_saves_nothing(tiny, tmp_path, monkeypatch, poison_step, message):
    """NaN weights after a step: caught at the next loss, or (last step) after training."""
    from dataclasses import replace

    real_step = torch.optim.AdamW.step
    steps = {"n": 0}

    def poisoned(self, *a, **k):
        out = real_step(self, *a, **k)
        steps["n"] += 1
        if steps["n"] == poison_step:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(math.nan)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    with pytest.raises(TrainingError, match=message):
        train_tiny(tiny, replace(FAST, epochs=1))  # 8 examples, batches of 4: two steps
    assert not list(tmp_path.iterdir())


def test_too_large_lr_is_refused_up_front(tiny):
    from dataclasses import replace

    for lr in (1e3, math.nan, math.inf, 1e39, 0.0, -1e-3):
        with pytest.raises(ValueError, match="lr must be a finite number"):
            replace(FAST, lr=lr)
    assert data(2)
