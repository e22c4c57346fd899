"""The colour, label and tick rules of jolalens figures (figures_style), one test per rule."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from jolalens.analysis import (
    gate_dynamics,
    gate_heatmap,
    head_heatmap,
    method_bar,
    probe_heatmap,
    selection_dynamics,
    selection_over_training,
    side_by_side,
    training_curves,
)
from jolalens.analysis.figures_style import DIVERGING, SEQUENTIAL


def _scale_name(trace) -> str:
    """The first and last colours identify a named plotly scale."""
    return (trace.colorscale[0][1], trace.colorscale[-1][1])


def _named(name: str):
    import plotly.express as px

    scale = px.colors.get_colorscale(name)
    return (scale[0][1], scale[-1][1])


def test_gate_maps_sit_on_a_fixed_unit_scale_whatever_the_data():
    gates = torch.full((3, 4), 0.2)  # the data maximum is 0.2: the scale must still end at 1
    trace = gate_heatmap(gates).data[0]
    assert (trace.zmin, trace.zmax) == (0.0, 1.0)
    assert _scale_name(trace) == _named(SEQUENTIAL)
    override = gate_heatmap(gates, zmin=0.1, zmax=0.3).data[0]
    assert (override.zmin, override.zmax) == (0.1, 0.3)
    fixed = head_heatmap(gates, zmin=0.0, zmax=2.0).data[0]
    assert (fixed.zmin, fixed.zmax) == (0.0, 2.0)


def test_signed_maps_diverge_around_zero_and_non_negative_maps_do_not():
    signed = head_heatmap(torch.tensor([[-1.0, 0.5], [0.25, 0.0]])).data[0]
    assert signed.zmid == 0.0 and signed.zmin == -signed.zmax == -1.0
    assert _scale_name(signed) == _named(DIVERGING)
    negative_only = head_heatmap(-torch.rand(2, 3) - 0.1).data[0]
    assert negative_only.zmid == 0.0 and negative_only.zmin == -negative_only.zmax, "all-negative is signed too"
    positive = head_heatmap(torch.rand(2, 3) + 0.1).data[0]
    assert positive.zmid is None and positive.zmin == 0.0 and _scale_name(positive) == _named(SEQUENTIAL)
    # the sequential map is the positive half of the diverging one: red means "more" in both, blue only "negative"
    assert _named(SEQUENTIAL)[1].replace(" ", "") != _named(DIVERGING)[0].replace(" ", "")


def test_probe_accuracy_is_scaled_from_chance():
    acc = 0.5 + 0.1 * torch.rand(2, 3)
    trace = probe_heatmap(acc).data[0]
    assert (trace.zmin, trace.zmax) == (0.5, 1.0)
    assert probe_heatmap(acc, chance=0.25).data[0].zmin == 0.25
    with pytest.raises(ValueError, match="chance"):
        probe_heatmap(acc, chance=1.0)


def test_side_by_side_fixes_named_ranges_and_keeps_signed_panels_diverging():
    gates, drop = torch.rand(2, 3) * 0.3, torch.randn(2, 3)
    fig = side_by_side({"JoLA gate": gates, "ablation": drop}, ranges={"JoLA gate": (0.0, 1.0)})
    g, d = fig.data
    assert (g.zmin, g.zmax) == (0.0, 1.0) and _scale_name(g) == _named(SEQUENTIAL)
    assert d.zmid == 0.0 and d.zmin == -d.zmax and _scale_name(d) == _named(DIVERGING)
    with pytest.raises(ValueError, match="lacks"):
        side_by_side({"a": gates}, ranges={"b": (0, 1)})


def test_axes_carry_human_labels():
    fig = head_heatmap(torch.rand(2, 3))
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("head", "layer")
    history = [{"p_open_additive": torch.rand(2, 2), "epoch": torch.tensor(e)} for e in range(3)]
    dyn = gate_dynamics(history, key="p_open_additive")
    assert dyn.layout.yaxis.title.text == "P(gate open), additive" and dyn.layout.xaxis.title.text == "epoch"
    assert tuple(dyn.layout.yaxis.range) == (-0.02, 1.02), "probabilities on a fixed axis"
    bars = method_bar(pd.DataFrame({"method": ["a", "b"], "overlap_at_k": [0.5, 0.2]}))
    assert bars.layout.yaxis.title.text == "overlap@k"
    assert (
        method_bar(
            pd.DataFrame({"method": ["a"], "mean": [0.3]}), y="mean", y_title="test accuracy"
        ).layout.yaxis.title.text
        == "test accuracy"
    )


def test_epoch_axes_tick_at_integers():
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_ce": [2.0, 1.5, 1.2], "open_frac_additive": [1.0, 0.6, 0.3]})
    for axis in (training_curves(history).layout.xaxis, training_curves(history).layout.xaxis2):
        assert axis.tickmode == "linear" and axis.dtick == 1 and axis.tickformat == "d"
    long = [{"gate_additive": torch.rand(2, 2), "epoch": torch.tensor(e)} for e in range(41)]
    axis = gate_dynamics(long).layout.xaxis
    assert axis.tick0 == 0 and axis.dtick == 3 and float(axis.dtick).is_integer()


def test_selection_over_training_tracks_the_open_set_from_epoch_zero():
    open_all = torch.ones(2, 2)
    history = [
        {"gate_additive": open_all, "epoch": torch.tensor(0)},
        {"gate_additive": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "epoch": torch.tensor(1)},
        {"gate_additive": torch.tensor([[1.0, 0.0], [0.0, 0.5]]), "epoch": torch.tensor(2)},
    ]
    frame = selection_over_training(history)
    assert frame["epoch"].tolist() == [0, 1, 2]
    assert frame["n_open"].tolist() == [4, 2, 2]
    assert frame["jaccard_to_final"].tolist() == pytest.approx([0.5, 1 / 3, 1.0])
    assert frame["added"].tolist() == [0, 0, 1] and frame["dropped"].tolist() == [0, 2, 1]
    fig = selection_dynamics(frame)
    assert list(fig.data[0].x) == [0, 1, 2] and fig.layout.xaxis.dtick == 1
