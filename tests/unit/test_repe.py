"""RePE: the reading direction recovers a planted vector (synthetic and on the tiny model),
control adds strength * direction on both backends, save/load, search points."""

import pytest
import torch

import jolalens
from jolalens import Backend, Example, hf_view
from jolalens.baselines.repe import (
    RepeConfig,
    RepeEdit,
    fit_repe,
    middle_layers,
    reading_directions,
    with_search_point,
)
from jolalens.errors import DataError

TOKENS = torch.tensor([[1, 40, 41, 42, 43, 44, 45], [1, 50, 51, 52, 53, 54, 55]])


def _planted(n=80, n_layers=3, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    v = torch.nn.functional.normalize(torch.randn(n_layers, d, generator=gen), dim=-1)
    base = torch.randn(n, n_layers, d, generator=gen) * 3
    a = 2 * torch.rand(n, 1, 1, generator=gen) + 0.5  # the shift's size varies by question
    pos = base + a * v + 0.05 * torch.randn(n, n_layers, d, generator=gen)
    neg = base - 0.05 * torch.randn(n, n_layers, d, generator=gen)
    return pos, neg, v


@pytest.mark.parametrize("center", [False, True])
def test_reading_direction_recovers_a_planted_vector(center):
    pos, neg, v = _planted()
    direction, sigma = reading_directions(pos, neg, center=center)
    cos = (direction * v).sum(-1)
    assert (cos > 0.99).all(), cos  # and it points to the positive side
    assert (sigma > 0).all()
    flipped, _ = reading_directions(neg, pos, center=center)
    torch.testing.assert_close(flipped, -direction)


def test_fit_repe_finds_a_direction_planted_in_the_tiny_model(tiny):
    """Correct answer "a", wrong "b" or "c": their embeddings differ only along ``v`` (scaled
    far above what the normalised attention and MLP can add), so layer 0's residual does too."""
    tok = tiny.tokenizer
    a, b, c = (
        tok("a", add_special_tokens=False).input_ids[0],
        tok("b", add_special_tokens=False).input_ids[0],
        tok("c", add_special_tokens=False).input_ids[0],
    )
    v = torch.nn.functional.normalize(torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(5)), dim=0)
    emb = hf_view(tiny).model.embed_tokens.weight
    with torch.no_grad():
        emb[c] = emb[b]
        emb[a] = emb[b] + 200 * v
    train = [Example(f"question {i}", "a", choices=("a", "b", "c")) for i in range(12)]
    edit = fit_repe(tiny, train, RepeConfig(seed=0), max_length=64, progress=False)
    assert float(edit.direction[0] @ v) > 0.99


def test_control_adds_strength_times_direction_on_both_backends(tiny, tmp_path):
    edit = RepeEdit.for_model(tiny, RepeConfig(strength=3.0, layers=(1,)))
    gen = torch.Generator().manual_seed(1)
    edit.direction.copy_(torch.nn.functional.normalize(torch.randn(edit.direction.shape, generator=gen), dim=-1))
    edit.sigma.fill_(1.0)
    view = hf_view(tiny)
    with torch.no_grad():
        with edit.attached(tiny, Backend.HF_VIEW) as net:
            viewed = net(TOKENS)
        with edit.attached(tiny, Backend.HOOK_POINTS) as net:
            hooked = net(TOKENS)
        # oracle: the final RMSNorm and unembedding of (layer 1's output + 3 * direction)
        captured = {}
        hook = view.model.layers[1].register_forward_hook(lambda m, a, out: captured.__setitem__("h", out))
        view(TOKENS)
        hook.remove()
        oracle = view.lm_head(view.model.norm(captured["h"] + 3.0 * edit.direction[1]))
    torch.testing.assert_close(viewed.logits, oracle, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hooked, viewed.logits, atol=1e-5, rtol=1e-5)
    loaded = jolalens.load_edit(edit.save(tmp_path / "repe"), tiny)
    torch.testing.assert_close(loaded.direction, edit.direction)
    assert loaded.config == edit.config


def test_search_points_scale_by_sigma_and_pick_layers(tiny):
    edit = RepeEdit.for_model(tiny)
    edit.sigma.copy_(torch.tensor([2.0, 4.0]))
    point = with_search_point(edit, {"strength_sigma": 0.5, "layers": "all"})
    assert point.layers == (0, 1) and point.config.strength == pytest.approx(0.5 * 3.0)
    assert middle_layers(32) == tuple(range(15, 27))


def test_fit_repe_needs_wrong_options(tiny):
    with pytest.raises(DataError, match="wrong option"):
        fit_repe(tiny, [Example("q", "a"), Example("r", "b")], progress=False)
