"""The JoLA edit on the tiny GQA model: shapes, identity, both backends, ablation options."""

import pytest
import torch

from jolalens import Backend, EditType, GateMode, JolaConfig, JolaEdit, ModelDims, selected_heads
from jolalens.hf_view import hf_view


def _tokens():
    return torch.randint(4, 100, (3, 11), generator=torch.Generator().manual_seed(1))


def test_shapes_and_init(tiny):
    edit = JolaEdit.for_model(tiny)
    assert edit.additive.shape == edit.multiplicative.shape == (2, 4, 8)
    assert edit.log_alpha_additive.shape == edit.log_alpha_multiplicative.shape == (2, 4)
    assert 0.0005 < edit.additive.std().item() < 0.002
    bound = (6 / 5) ** 0.5
    assert edit.log_alpha_additive.abs().max() <= bound
    assert edit.n_trainable() == 2 * 4 * (2 * 8 + 2)
    assert not edit.training, "a fresh edit starts with deterministic gates"


@pytest.mark.parametrize(
    "dims, expected",
    [(ModelDims(32, 32, 8, 128, 4096), 264_192), (ModelDims(28, 28, 4, 128, 3584), 202_272)],
)
def test_parameter_count_matches_paper_models(dims, expected):
    assert JolaEdit(dims).n_trainable() == expected


def test_init_is_seeded():
    dims = ModelDims(2, 4, 2, 8, 32)
    a, b, c = JolaEdit(dims, JolaConfig(seed=1)), JolaEdit(dims, JolaConfig(seed=1)), JolaEdit(dims, JolaConfig(seed=2))
    assert torch.equal(a.additive, b.additive) and not torch.equal(a.additive, c.additive)


def test_zero_edit_leaves_logits_unchanged(tiny):
    edit = JolaEdit.for_model(tiny).eval()
    with torch.no_grad():
        edit.additive.zero_()
        edit.multiplicative.zero_()
        base = tiny(_tokens())
        with edit.attached(tiny, Backend.HOOK_POINTS) as net:
            assert torch.equal(net(_tokens()), base)


def test_closed_gates_leave_logits_unchanged(tiny):
    edit = JolaEdit.for_model(tiny, JolaConfig(init_std=1.0)).eval()
    with torch.no_grad():
        edit.log_alpha_additive.fill_(-5.0)
        edit.log_alpha_multiplicative.fill_(-5.0)
        base = tiny(_tokens())
        with edit.attached(tiny, Backend.HOOK_POINTS) as net:
            assert torch.equal(net(_tokens()), base)


def test_hook_z_and_o_proj_backends_agree_logits_and_grads(tiny):
    edit = JolaEdit.for_model(tiny, JolaConfig(init_std=0.3)).eval()
    grads = {}
    outs = {}
    for backend in Backend:
        edit.zero_grad()
        with edit.attached(tiny, backend) as net:
            out = net(_tokens())
            logits = out if backend is Backend.HOOK_POINTS else out.logits
        logits.logsumexp(-1).mean().backward()
        outs[backend] = logits.detach()
        grads[backend] = [p.grad.clone() for p in edit.parameters()]
    assert torch.allclose(outs[Backend.HOOK_POINTS], outs[Backend.HF_VIEW], atol=1e-5)
    for g1, g2 in zip(grads[Backend.HOOK_POINTS], grads[Backend.HF_VIEW], strict=True):
        assert torch.allclose(g1, g2, atol=1e-5, rtol=1e-4)


def test_edit_changes_only_inside_with_block(tiny):
    edit = JolaEdit.for_model(tiny, JolaConfig(init_std=0.5)).eval()
    with torch.no_grad():
        base = tiny(_tokens())
        with edit.attached(tiny, Backend.HOOK_POINTS) as net:
            assert not torch.allclose(net(_tokens()), base)
        assert torch.equal(tiny(_tokens()), base)
        with edit.attached(tiny, Backend.HF_VIEW):
            pass
        assert torch.allclose(hf_view(tiny)(_tokens()).logits, base, atol=1e-5)


def test_removes_only_its_own_hooks(tiny):
    calls = []
    tiny.hook_dict["blocks.0.attn.hook_z"].add_hook(lambda z, hook: calls.append(1))
    edit = JolaEdit.for_model(tiny)
    with edit.attached(tiny, Backend.HOOK_POINTS):
        pass
    with torch.no_grad():
        tiny(_tokens())
    assert calls == [1]
    tiny.reset_hooks()


def test_edit_is_per_query_head_under_gqa(tiny):
    """Editing query head 1 must not touch query head 0 that shares its KV head."""
    edit = JolaEdit.for_model(tiny, JolaConfig(layers=(1,))).eval()
    seen = {}
    with torch.no_grad():
        edit.multiplicative.zero_()
        edit.additive.zero_()
        edit.additive[0, 1] = 1.0
        edit.log_alpha_additive.fill_(10.0)

        def grab(z, hook):
            seen["z"] = z.clone()

        base = {}
        tiny.run_with_hooks(
            _tokens(), fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: base.setdefault("z", z.clone()))]
        )
        with edit.attached(tiny, Backend.HOOK_POINTS):
            # a later hook on the same point sees the edited z
            tiny.run_with_hooks(_tokens(), fwd_hooks=[("blocks.1.attn.hook_z", grab)])
    diff = (seen["z"] - base["z"]).abs().amax(dim=(0, 1, 3))
    assert diff[1] == pytest.approx(1.0) and diff[0] == 0 and diff[2] == 0 and diff[3] == 0


@pytest.mark.parametrize(
    "cfg, params",
    [
        (JolaConfig(edit_type=EditType.ADDITIVE), {"additive", "log_alpha_additive"}),
        (JolaConfig(edit_type="multiplicative"), {"multiplicative", "log_alpha_multiplicative"}),
        (JolaConfig(gate_mode=GateMode.SHARED), {"additive", "multiplicative", "log_alpha_shared"}),
        (JolaConfig(gate_mode=GateMode.NONE), {"additive", "multiplicative"}),
        (JolaConfig(layers=(1,)), {"additive", "multiplicative", "log_alpha_additive", "log_alpha_multiplicative"}),
    ],
)
def test_ablation_options(tiny, cfg, params):
    edit = JolaEdit.for_model(tiny, cfg).eval()
    assert {n for n, _ in edit.named_parameters()} == params
    with torch.no_grad():
        out = None
        with edit.attached(tiny, Backend.HOOK_POINTS) as net:
            out = net(_tokens())
        with edit.attached(tiny, Backend.HF_VIEW) as net:
            assert torch.allclose(net(_tokens()).logits, out, atol=1e-5)
    if cfg.layers == (1,):
        maps = edit.head_maps()
        assert maps["gate_additive"][0].abs().sum() == 0 and maps["gate_additive"][1].abs().sum() > 0


def test_shared_gate_uses_one_sample_for_both_types(tiny):
    edit = JolaEdit.for_model(tiny, JolaConfig(gate_mode=GateMode.SHARED)).train()
    g = edit.gates(layer_index=0)
    assert torch.equal(g["additive"], g["multiplicative"])


def test_no_gate_mode_gates_are_one(tiny):
    edit = JolaEdit.for_model(tiny, JolaConfig(gate_mode=GateMode.NONE)).train()
    assert all(torch.equal(v, torch.ones_like(v)) for v in edit.gates().values())


def test_training_gates_are_noisy_and_per_example_option(tiny):
    edit = JolaEdit.for_model(tiny).train()
    g1, g2 = edit.gates()["additive"], edit.gates()["additive"]
    assert not torch.equal(g1, g2)
    edit_pe = JolaEdit.for_model(tiny, JolaConfig(per_example_noise=True)).train()
    assert edit_pe.gates(batch=5, layer_index=0)["additive"].shape == (5, 4)
    with edit_pe.attached(tiny, Backend.HOOK_POINTS) as net:
        net(_tokens())  # broadcasting over [batch, pos, head, d_head] works


def test_layer_out_of_range_is_refused(tiny):
    with pytest.raises(ValueError, match="out of range"):
        JolaEdit.for_model(tiny, JolaConfig(layers=(5,)))


def test_bad_config_values():
    with pytest.raises(ValueError):
        JolaConfig(edit_type="sideways")
    with pytest.raises(ValueError):
        JolaConfig(layers=(1, 1))
    with pytest.raises(ValueError):
        JolaConfig(init_std=0)


def test_selected_heads_and_repr(tiny):
    edit = JolaEdit.for_model(tiny).eval()
    with torch.no_grad():
        edit.log_alpha_additive.fill_(-5)
        edit.log_alpha_multiplicative.fill_(-5)
        edit.log_alpha_additive[1, 2] = 3.0
    df = selected_heads(edit)
    assert df[["layer", "head", "kind", "label"]].values.tolist() == [[1, 2, "additive", "L1H2"]]
    assert df.loc[0, "gate"] == 1.0
    assert "additive open 12%" in repr(edit) and "params=144" in repr(edit)
    summary = edit.parameter_summary()
    assert summary.iloc[-1]["count"] == 144
