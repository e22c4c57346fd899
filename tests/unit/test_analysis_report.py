"""make_figures over a hand-made run directory: which files, which data, and the README entry."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from jolalens.analysis import HeadScores, head_maps_from_run, make_figures
from jolalens.analysis import report as report_module
from jolalens.errors import EditLoadError


def _maps(gate_add: torch.Tensor) -> dict[str, torch.Tensor]:
    zero = torch.zeros_like(gate_add)
    return {
        "gate_additive": gate_add,
        "p_open_additive": gate_add.clamp(min=0.05),
        "norm_additive": 2 * gate_add,
        "gate_multiplicative": zero,
        "p_open_multiplicative": zero,
        "norm_multiplicative": zero,
    }


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "ablation").mkdir(parents=True)
    gate = torch.zeros(3, 4)
    gate[1, 2], gate[2, 0] = 0.9, 0.6
    torch.save(_maps(gate), run / "head_maps.pt")
    torch.save([_maps(gate * e / 3) for e in (1, 2, 3)], run / "gate_history.pt")
    pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "step": [5, 10, 15],
            "train_ce": [2.0, 1.7, 1.5],
            "train_penalty": [0.3, 0.2, 0.1],
            "val_ce": [2.1, 1.8, 1.7],
            "lam": [0.0] * 3,
            "open_frac_additive": [1.0, 0.5, 2 / 12],
            "open_frac_multiplicative": [0.0] * 3,
        }
    ).to_csv(run / "history.csv", index=False)
    importance = torch.full((3, 4), 0.01)
    importance[1, 2], importance[2, 0] = 2.0, 1.0
    HeadScores(importance, None, -1.0, None, "ablation", "mean", 10).save(run / "ablation" / "mean.pt")
    return run


@pytest.fixture
def captured(monkeypatch):
    """Record the figures instead of rendering PNGs (the PNG path is tested in test_analysis_figures)."""
    figs = {}

    def fake_save_figures(items, **kwargs):
        out = []
        for fig, path in items:
            figs[path.name] = fig
            path.with_suffix(".html").write_text("stub")
            out += [path.with_suffix(".html"), path.with_suffix(".png")]
        return out

    monkeypatch.setattr(report_module, "save_figures", fake_save_figures)
    return figs


def test_make_figures_writes_every_supported_figure(run_dir, tmp_path, captured):
    out = tmp_path / "figures"
    paths = make_figures(run_dir, out, command="jolalens figures --run run --out figures")
    assert set(captured) == {
        "gates_additive",
        "p_open_additive",
        "norm_additive",
        "training_curves",
        "gate_dynamics_additive",
        "jola_vs_mean",
        "methods_vs_mean_additive",
    }  # no multiplicative figures: that edit type is absent
    assert out / "agreement.csv" in paths and out / "gates_additive.png" in paths
    heat = captured["gates_additive"].data[0]
    assert heat.z[1][2] == pytest.approx(0.9) and heat.customdata[1][2] == "L1H2"
    side = captured["jola_vs_mean"]
    assert len(side.data) == 2 and side.data[1].z[1][2] == pytest.approx(2.0)
    agreement = pd.read_csv(out / "agreement.csv").iloc[0]
    assert (agreement["n_selected"], agreement["overlap"], agreement["auroc"]) == (2, 2, 1.0)
    layers = pd.read_csv(out / "layer_distribution_additive.csv")
    assert list(layers["n_selected"]) == [0, 1, 1]
    dyn = captured["gate_dynamics_additive"]
    assert dyn.data[0].name == "L1H2" and list(dyn.data[0].y) == pytest.approx([0.3, 0.6, 0.9])
    readme = (out / "README.md").read_text()
    assert "`jolalens figures --run run --out figures`" in readme and "`jola_vs_mean.png`" in readme
    assert (heat.zmin, heat.zmax) == (0.0, 1.0), "gate maps on the fixed [0, 1] scale"
    assert (side.data[0].zmin, side.data[0].zmax) == (0.0, 1.0) and (side.data[1].zmin, side.data[1].zmax) == (0.0, 2.0)
    make_figures(run_dir, out, command="jolalens figures --run run --out figures")
    assert (out / "README.md").read_text() == readme, "a second run rewrites the index, it does not append"


def test_all_gates_open_skips_agreement_but_keeps_the_side_by_side(run_dir, tmp_path, captured):
    """Every head edited (the best epoch came before any gate closed): no contrast to rank."""
    torch.save(_maps(torch.full((3, 4), 0.7)), run_dir / "head_maps.pt")
    paths = make_figures(run_dir, tmp_path / "figures")
    assert "jola_vs_mean" in captured and "methods_vs_mean_additive" not in captured
    assert tmp_path / "figures" / "agreement.csv" not in paths
    assert not (tmp_path / "figures" / "agreement.csv").exists()


def test_run_dir_without_edit_or_maps_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EditLoadError, match="not a JoLA run directory"):
        head_maps_from_run(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        make_figures(tmp_path / "missing", tmp_path / "out")


def test_head_maps_from_a_saved_edit(tiny, tmp_path):
    jola = pytest.importorskip("jolalens.jola")
    edit = jola.JolaEdit.for_model(tiny)
    edit.save(tmp_path / "run" / "edit")
    maps = head_maps_from_run(tmp_path / "run", model=tiny)
    expected = edit.head_maps()
    assert set(maps) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(maps[key], value)


def test_cli_figures_writes_beside_the_run_not_into_the_repository(run_dir, tmp_path, captured, monkeypatch):
    """`jolalens figures --run DIR` once appended to the tracked figures/README.md on every run."""
    from jolalens.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "README.md").write_text("tracked\n")
    assert main(["figures", "--run", str(run_dir)]) == 0
    assert (tmp_path / "figures" / "README.md").read_text() == "tracked\n"
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["README.md"]
    assert (run_dir / "figures" / "README.md").is_file() and (run_dir / "figures" / "agreement.csv").is_file()
