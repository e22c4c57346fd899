"""Golden values of the Hard-Concrete gate (temperature 0.33, stretch -0.1..1.1)."""

import math

import pytest
import torch

from jolalens.gates import HardConcrete

HC = HardConcrete()


def test_l0_shift_and_threshold_constants():
    assert HC.l0_shift == pytest.approx(0.7913, abs=1e-4)
    assert HC.closed_threshold == pytest.approx(-math.log(11), abs=1e-12)


def test_prob_open_at_zero_is_0_6881():
    assert HC.prob_open(torch.tensor(0.0)).item() == pytest.approx(0.6881, abs=1e-4)


def test_eval_gate_golden_values():
    la = torch.tensor([-10.0, 0.0, 10.0, 1.0])
    expected = torch.tensor([0.0, 0.5, 1.0, 1.2 * torch.sigmoid(torch.tensor(1.0)).item() - 0.1])
    assert torch.allclose(HC.deterministic(la), expected, atol=1e-7)


def test_eval_gate_is_zero_exactly_iff_below_minus_ln11():
    thr = -math.log(11)
    la = torch.tensor([thr - 1e-3, thr - 1e-6, thr + 1e-4, thr + 1e-2], dtype=torch.float64)
    g = HC.deterministic(la)
    assert g[0] == 0 and g[1] == 0
    assert g[2] > 0 and g[3] > 0
    assert HC.deterministic(torch.tensor([-thr + 1e-3], dtype=torch.float64)).item() == 1.0


def test_sample_statistics_at_zero():
    gen = torch.Generator().manual_seed(0)
    g = HC.sample(torch.zeros(200_000), generator=gen)
    assert (g == 0).float().mean().item() == pytest.approx(0.3119, abs=0.005)
    assert (g != 0).float().mean().item() == pytest.approx(HC.prob_open(torch.tensor(0.0)).item(), abs=0.005)
    assert g.mean().item() == pytest.approx(0.5, abs=0.005)
    assert g.min() >= 0 and g.max() <= 1


def test_sample_matches_formula_with_same_noise():
    la = torch.linspace(-3, 3, 13)
    g = HC.sample(la, generator=torch.Generator().manual_seed(7))
    u = torch.rand(13, generator=torch.Generator().manual_seed(7)) * (1 - 2e-6) + 1e-6
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + la) / 0.33)
    assert torch.allclose(g, (s * 1.2 - 0.1).clamp(0, 1), atol=1e-6)


def test_sample_is_differentiable_where_not_clipped():
    la = torch.zeros(64, requires_grad=True)
    g = HC.sample(la, generator=torch.Generator().manual_seed(1))
    g.sum().backward()
    inside = (g > 0) & (g < 1)
    assert (la.grad[inside] > 0).all() and (la.grad[~inside] == 0).all()


def test_per_example_noise_shape():
    g = HC.sample(torch.zeros(3, 4), generator=torch.Generator().manual_seed(0), batch_shape=(5,))
    assert g.shape == (5, 3, 4)


@pytest.mark.parametrize("kwargs", [{"temperature": 0}, {"stretch_low": 0.1}, {"stretch_high": 0.9}, {"eps": 0.7}])
def test_invalid_constants_rejected(kwargs):
    with pytest.raises(ValueError):
        HardConcrete(**kwargs)
