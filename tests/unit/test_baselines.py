"""Baselines on the tiny model: identity at init, independent formula oracles on a plain
Hugging Face copy, save/load, parameter counts (the spec's Llama-3.1-8B numbers), training."""

import copy
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import jolalens
from jolalens import Backend, Example, ModelDims, TrainConfig, hf_view, train_edit
from jolalens.baselines import (
    BitFitConfig,
    BitFitEdit,
    ItiConfig,
    ItiEdit,
    LofitConfig,
    LofitEdit,
    LoraConfig,
    LoraEdit,
    Projection,
    RedConfig,
    RedEdit,
    ZeroShotEdit,
    fit_iti,
    probe_accuracies,
    train_lofit,
)
from jolalens.edit import answer_positions
from jolalens.errors import DataError, EditLoadError

LLAMA_8B = ModelDims(n_layers=32, n_heads=32, n_kv_heads=8, d_head=128, d_model=4096, d_mlp=14336)
TOKENS = torch.tensor([[1, 40, 41, 42, 43, 44, 45], [1, 50, 51, 52, 53, 54, 55]])
FAST = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, progress=False, lr=5e-2)


def _logits(model, edit=None, backend=Backend.HF_VIEW, tokens=TOKENS):
    if edit is None:
        with torch.no_grad():
            return hf_view(model)(tokens).logits if backend is Backend.HF_VIEW else model(tokens)
    with torch.no_grad(), edit.attached(model, backend) as net:
        out = net(tokens)
    return (out.logits if backend is Backend.HF_VIEW else out).detach()


def _perturb(edit, scale=0.2):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return edit


def _fitted_iti(model, k=3):
    edit = ItiEdit.for_model(model, ItiConfig(k=k, alpha=2.0))
    gen = torch.Generator().manual_seed(2)
    edit.direction.copy_(torch.nn.functional.normalize(torch.randn(edit.direction.shape, generator=gen), dim=-1))
    edit.sigma.copy_(torch.rand(edit.sigma.shape, generator=gen) + 0.5)
    edit.probe_accuracy.copy_(torch.rand(edit.probe_accuracy.shape, generator=gen))
    return edit


def _hf_copy(model):
    return copy.deepcopy(hf_view(model))


# ---- parameter counts: the spec's table for Llama-3.1-8B ------------------------------------
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (RedConfig(), 262_144),
        (BitFitConfig(), 1_376_256),
        (LoraConfig(r=32, alpha=64), 56_623_104),
        (LoraConfig(r=32, alpha=64, targets=tuple(Projection)), 83_886_080),
        (LoraConfig(r=8, alpha=16, targets=(Projection.Q, Projection.V)), 3_407_872),
        (LofitConfig(), 131_072),
        (LofitConfig(heads=tuple((i, 0) for i in range(32))), 4_096),
        (ItiConfig(k=48), 6_144 + 48),
    ],
)
def test_parameter_counts_match_spec_for_llama_8b(config, expected):
    assert config.n_parameters(LLAMA_8B) == expected


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (RedEdit, RedConfig()),
        (RedEdit, RedConfig(layers=(1,), scaling=False)),
        (BitFitEdit, BitFitConfig()),
        (BitFitEdit, BitFitConfig(targets=(Projection.Q, Projection.DOWN))),
        (LoraEdit, LoraConfig(r=4, alpha=8)),
        (LoraEdit, LoraConfig(r=2, alpha=2, targets=tuple(Projection), layers=(0,))),
        (LofitEdit, LofitConfig()),
        (LofitEdit, LofitConfig(heads=((0, 1), (1, 3)))),
    ],
)
def test_trainable_count_matches_formula(tiny, cls, config):
    edit = cls.for_model(tiny, config)
    assert edit.n_trainable() == config.n_parameters(jolalens.model_dims(tiny)) > 0
    assert edit.parameter_summary()["count"].iloc[-1] == edit.n_trainable()


# ---- identity at init ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", list(Backend))
@pytest.mark.parametrize(
    "make",
    [
        lambda m: RedEdit.for_model(m),
        lambda m: BitFitEdit.for_model(m),
        lambda m: LoraEdit.for_model(m, LoraConfig(r=4, alpha=8)),
        lambda m: ZeroShotEdit.for_model(m),
        lambda m: ItiEdit.for_model(m),  # unfitted: sigma = 0
    ],
    ids=["red", "bitfit", "lora", "zeroshot", "iti-unfitted"],
)
def test_fresh_edit_is_identity(tiny, make, backend):
    base = _logits(tiny, backend=backend)
    assert torch.equal(_logits(tiny, make(tiny), backend), base)


def test_lofit_init_is_near_identity_and_exact_at_zero(tiny):
    base = _logits(tiny)
    for config in (LofitConfig(), LofitConfig(heads=((0, 0), (1, 2)))):
        edit = LofitEdit.for_model(tiny, config)
        assert 0 < (_logits(tiny, edit) - base).abs().max() < 1e-2
        with torch.no_grad():
            next(edit.parameters()).zero_()
        assert torch.equal(_logits(tiny, edit), base)


# ---- backends agree, and the model comes back unchanged -------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda m: _perturb(RedEdit.for_model(m)),
        lambda m: _perturb(BitFitEdit.for_model(m)),
        lambda m: _perturb(LoraEdit.for_model(m, LoraConfig(r=4, alpha=8))),
        lambda m: _perturb(LofitEdit.for_model(m)),
        lambda m: _perturb(LofitEdit.for_model(m, LofitConfig(heads=((0, 3), (1, 1))))),
        lambda m: _fitted_iti(m),
    ],
    ids=["red", "bitfit", "lora", "lofit1", "lofit2", "iti"],
)
def test_backends_agree_and_detach_cleanly(tiny, make):
    base = _logits(tiny)
    edit = make(tiny)
    hooked = _logits(tiny, edit, Backend.HOOK_POINTS)
    viewed = _logits(tiny, edit, Backend.HF_VIEW)
    assert (hooked - base).abs().max() > 1e-3
    torch.testing.assert_close(hooked, viewed, atol=1e-5, rtol=1e-5)
    assert torch.equal(_logits(tiny), base)
    assert not tiny.blocks[0].attn.hook_z.fwd_hooks


# ---- independent oracles from the formulas, on a plain HF copy, reading the saved file --------
def _saved(edit, tmp_path):
    path = edit.save(tmp_path / edit.method)
    return load_file(str(path / jolalens.edit.WEIGHTS_FILE))


def test_red_oracle(tiny, tmp_path):
    edit = _perturb(RedEdit.for_model(tiny))
    w = _saved(edit, tmp_path)
    hf = _hf_copy(tiny)
    for layer, block in enumerate(hf.model.layers):
        scale = 1 + w[f"blocks.{layer}.hook_mlp_out.scale_delta"]
        bias = w[f"blocks.{layer}.hook_mlp_out.bias"]
        block.mlp.register_forward_hook(lambda m, a, out, s=scale, b=bias: out * s + b)
    torch.testing.assert_close(_logits(tiny, edit), hf(TOKENS).logits.detach(), atol=1e-5, rtol=1e-5)


def test_bitfit_oracle_is_a_plain_linear_bias(tiny, tmp_path):
    edit = _perturb(BitFitEdit.for_model(tiny))
    w = _saved(edit, tmp_path)
    hf = _hf_copy(tiny)
    for layer, block in enumerate(hf.model.layers):
        for proj in Projection:
            linear = getattr(getattr(block, proj.hf_parent), proj.value)
            linear.bias = torch.nn.Parameter(w[f"blocks.{layer}.{proj.tl_component}.bias"].clone())
    torch.testing.assert_close(_logits(tiny, edit), hf(TOKENS).logits.detach(), atol=1e-5, rtol=1e-5)


def test_lora_oracle_is_a_merged_weight(tiny, tmp_path):
    config = LoraConfig(r=4, alpha=12, targets=tuple(Projection))
    edit = _perturb(LoraEdit.for_model(tiny, config))
    w = _saved(edit, tmp_path)
    hf = _hf_copy(tiny)
    with torch.no_grad():
        for layer, block in enumerate(hf.model.layers):
            for proj in Projection:
                linear = getattr(getattr(block, proj.hf_parent), proj.value)
                site = f"blocks.{layer}.{proj.tl_component}"
                linear.weight += (config.alpha / config.r) * w[f"{site}.lora_B"] @ w[f"{site}.lora_A"]
    torch.testing.assert_close(_logits(tiny, edit), hf(TOKENS).logits.detach(), atol=1e-5, rtol=1e-5)


def test_lofit_oracle_folds_into_o_proj(tiny, tmp_path):
    dims = jolalens.model_dims(tiny)
    heads = ((0, 3), (1, 0), (1, 2))
    for config in (LofitConfig(), LofitConfig(heads=heads)):
        edit = _perturb(LofitEdit.for_model(tiny, config))
        w = _saved(edit, tmp_path / str(config.stage))
        hf = _hf_copy(tiny)
        with torch.no_grad():
            for layer, block in enumerate(hf.model.layers):
                o = block.self_attn.o_proj
                if config.heads is None:  # z -> (1 + A) z: scale W_O's input columns
                    o.weight *= 1 + w[f"blocks.{layer}.attn.hook_z.scale"].flatten()
                else:  # z -> z + v: a bias W_O[:, head] v
                    bias = torch.zeros(dims.d_model)
                    for a, b in heads:
                        if a == layer:
                            cols = slice(b * dims.d_head, (b + 1) * dims.d_head)
                            bias += o.weight[:, cols] @ w[f"blocks.{a}.attn.hook_z.head_{b}.bias"]
                    o.bias = torch.nn.Parameter(bias)
        torch.testing.assert_close(_logits(tiny, edit), hf(TOKENS).logits.detach(), atol=1e-5, rtol=1e-5)


def test_iti_oracle_shifts_selected_heads_at_the_last_position(tiny, tmp_path):
    dims = jolalens.model_dims(tiny)
    edit = _fitted_iti(tiny, k=3)
    w = _saved(edit, tmp_path)
    acc = torch.stack([w[f"blocks.{layer}.attn.hook_z.probe_accuracy"] for layer in range(dims.n_layers)])
    order = sorted(((float(acc[a, b]), a, b) for a in range(dims.n_layers) for b in range(dims.n_heads)), reverse=True)
    hf = _hf_copy(tiny)
    for _, a, b in order[:3]:
        shift = 2.0 * w[f"blocks.{a}.attn.hook_z.sigma"][b] * w[f"blocks.{a}.attn.hook_z.direction"][b]

        def pre(module, args, b=b, shift=shift):
            x = args[0].clone()
            x[:, -1, b * dims.d_head : (b + 1) * dims.d_head] += shift
            return (x,)

        hf.model.layers[a].self_attn.o_proj.register_forward_pre_hook(pre)
    expected = hf(TOKENS).logits.detach()
    got = _logits(tiny, edit)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # earlier positions are untouched: the edit sits at the last one only
    torch.testing.assert_close(got[:, :-1], _logits(tiny)[:, :-1], atol=1e-6, rtol=1e-6)


def test_iti_follows_declared_answer_positions(tiny):
    edit = _fitted_iti(tiny)
    mask = torch.zeros(TOKENS.shape, dtype=torch.bool)
    mask[:, 3:5] = True
    base = _logits(tiny)
    with answer_positions(mask):
        got = _logits(tiny, edit)
    torch.testing.assert_close(got[:, :3], base[:, :3], atol=1e-6, rtol=1e-6)
    assert (got[:, 3:] - base[:, 3:]).abs().max() > 1e-3
    with (
        answer_positions(torch.ones(1, 3, dtype=torch.bool)),
        pytest.raises(jolalens.JolaError, match="does not match"),
    ):
        _logits(tiny, edit)


# ---- save / load -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda m: _perturb(RedEdit.for_model(m, RedConfig(layers=(1,)))),
        lambda m: _perturb(BitFitEdit.for_model(m, BitFitConfig(targets=(Projection.V, Projection.UP)))),
        lambda m: _perturb(LoraEdit.for_model(m, LoraConfig(r=2, alpha=4))),
        lambda m: _perturb(LofitEdit.for_model(m, LofitConfig(heads=((1, 1),)))),
        lambda m: _fitted_iti(m),
        lambda m: ZeroShotEdit.for_model(m),
    ],
    ids=["red", "bitfit", "lora", "lofit", "iti", "zeroshot"],
)
def test_save_load_round_trip(tiny, tmp_path, make):
    edit = make(tiny)
    edit.save(tmp_path / "e")
    loaded = jolalens.load_edit(tmp_path / "e", tiny)
    assert type(loaded) is type(edit) and loaded.config == edit.config
    torch.testing.assert_close(_logits(tiny, loaded), _logits(tiny, edit), atol=0, rtol=0)
    keys = set(load_file(str(tmp_path / "e" / jolalens.edit.WEIGHTS_FILE)))
    assert all(k.startswith("blocks.") for k in keys)


def test_load_refuses_another_model_and_corrupt_weights(tiny, tmp_path):
    from jolalens.testing import tiny_model

    edit = _perturb(RedEdit.for_model(tiny))
    edit.save(tmp_path / "e")
    with pytest.raises(EditLoadError, match="another model"):
        jolalens.load_edit(tmp_path / "e", tiny_model(n_layers=3))
    other = BitFitEdit.for_model(tiny)
    other.save(tmp_path / "b")
    with pytest.raises(EditLoadError, match="not 'red'"):
        RedEdit.load(tmp_path / "b", tiny)


# ---- LoRA goes through peft -----------------------------------------------------------------------
def test_lora_swaps_peft_layers_in_and_out(tiny):
    from peft.tuners.lora import Linear as PeftLinear

    edit = LoraEdit.for_model(tiny, LoraConfig(r=2, alpha=4, targets=(Projection.Q,)))
    view = hf_view(tiny)
    original = view.model.layers[0].self_attn.q_proj
    with edit.attached(tiny, Backend.HF_VIEW):
        assert isinstance(view.model.layers[0].self_attn.q_proj, PeftLinear)
    assert view.model.layers[0].self_attn.q_proj is original
    _perturb(edit)
    with torch.no_grad(), edit.attached(tiny, Backend.HF_VIEW) as net:
        swapped = net(TOKENS).logits
    handles = [(h.module.register_forward_hook(h.fn)) for h in edit.hf_hooks(view)]
    try:
        with torch.no_grad():
            hooked = view(TOKENS).logits
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(swapped, hooked, atol=1e-6, rtol=1e-6)
    assert (swapped - _logits(tiny)).abs().max() > 1e-4
    assert set(edit.state_dict()) == {f"lora_{x}.L{i}_q_proj.weight" for x in "AB" for i in range(2)}


# ---- ITI probes find a planted direction ----------------------------------------------------------
def test_probe_accuracy_finds_the_informative_head():
    gen = torch.Generator().manual_seed(0)
    n, layers, heads, d = 200, 2, 3, 4
    y = torch.arange(n) % 2
    x = torch.randn(n, layers, heads, d, generator=gen)
    x[:, 1, 2, 0] += 3.0 * (2 * y - 1)  # only L1H2 carries the label
    acc = probe_accuracies(x[:150], y[:150], x[150:], y[150:])
    assert acc.shape == (layers, heads)
    assert acc[1, 2] > 0.9
    others = torch.cat([acc.flatten()[:5]])
    assert others.max() < 0.8


def _mc_data(n=12):
    return [Example(f"pick {c}", c, choices=("a", "b", "c")) for c in "abc" * (n // 3)]


def test_fit_iti_on_the_tiny_model(tiny):
    edit = fit_iti(tiny, _mc_data(), ItiConfig(k=2, alpha=5.0, seed=0), progress=False)
    norms = edit.direction.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    assert (edit.sigma > 0).all() and int(edit.selected().sum()) == 2
    assert edit.n_trainable() == 0 and edit.n_stored() == 2 * 8 + 2
    stronger = edit.with_strength(alpha=10.0)
    torch.testing.assert_close(stronger.shift(), 2 * edit.shift())
    with pytest.raises(DataError, match="multiple-choice"):
        fit_iti(tiny, [Example("q", "free text")] * 6, progress=False)


# ---- training through the shared trainer ------------------------------------------------------------
def _train_data(n=12):
    letters = "abcdef"
    return [Example(f"repeat {letters[i % 6]}", letters[i % 6] * 2) for i in range(n)]


@pytest.mark.parametrize(
    "make",
    [
        lambda m: RedEdit.for_model(m),
        lambda m: BitFitEdit.for_model(m),
        lambda m: LoraEdit.for_model(m, LoraConfig(r=2, alpha=4)),
    ],
    ids=["red", "bitfit", "lora"],
)
def test_train_edit_learns_and_leaves_the_model_alone(tiny, make):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    edit = make(tiny)
    init = {k: v.clone() for k, v in edit.state_dict().items()}
    result = train_edit(tiny, edit, _train_data(), _train_data(6), config=FAST)
    assert result.history["val_ce"].iloc[-1] < result.history["val_ce"].iloc[0] or result.best_epoch >= 1
    assert any(not torch.equal(init[k], v) for k, v in result.edit.state_dict().items())
    for n, p in tiny.named_parameters():
        assert torch.equal(p, before[n]), n
    assert result.summary()["method"] == edit.method


def test_train_lofit_two_stages(tiny):
    res = train_lofit(tiny, _train_data(), _train_data(6), k=3, config=replace(FAST, epochs=1))
    assert res.stage1.edit.stage == 1 and res.stage2.edit.stage == 2
    assert len(res.heads) == 3 and res.stage2.edit.config.heads == res.heads
    assert res.stage2.edit.n_trainable() == 3 * 8
    top = torch.topk(res.stage1_scores.flatten(), 3).indices.tolist()
    assert sorted(divmod(i, 4) for i in top) == list(res.heads)


def test_train_edit_refuses_an_edit_without_parameters(tiny):
    with pytest.raises(jolalens.TrainingError, match="no trainable"):
        train_edit(tiny, ZeroShotEdit.for_model(tiny), _train_data(), _train_data(4), config=FAST)
