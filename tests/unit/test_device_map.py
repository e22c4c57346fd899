"""A model split with an accelerate ``device_map``: on CPU, layer 1 offloaded to disk.

What this proves on a CPU-only machine: the accelerate hooks (which load offloaded weights
around each module's forward and move inputs to its execution device) survive into
``hf_view``, and training, log-likelihood and generation evaluation, ITI fitting and export
give the same numbers as the unsplit model. What it cannot prove: tensors really living on
two GPUs (every execution device here is ``cpu``); for that, run this file's checks on a
machine with two GPUs (see docs/gpu.md).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import jolalens
from jolalens import Backend, Example, JolaConfig, JolaEdit, SparsityConfig, TrainConfig, train_jola
from jolalens.baselines import ItiConfig, fit_iti
from jolalens.evaluate import evaluate
from jolalens.hf_view import hf_view

SPLIT = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "lm_head": "cpu",
}
MC = [Example(f"pick {c} {i}", c, choices=("a", "b", "c")) for i, c in zip(range(12), "abc" * 4, strict=True)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from jolalens.testing import tiny_model

    tiny = tiny_model(seed=0)
    path = tmp_path_factory.mktemp("ckpt")
    hf_view(tiny).save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def pair(checkpoint, tmp_path):
    whole = jolalens.load_model(checkpoint, device="cpu")
    split = jolalens.load_model(checkpoint, device_map=SPLIT, offload_folder=tmp_path / "offload")
    return whole, split


def _batch(model):
    return model.tokenizer(["pick a 1", "pick b twelve"], return_tensors="pt", padding=True)


def test_view_keeps_accelerate_offload_hooks(pair):
    _, split = pair
    view = hf_view(split)
    o_proj = view.model.layers[1].self_attn.o_proj
    assert o_proj.weight.is_meta and o_proj._hf_hook.offload
    assert not view.model.layers[0].self_attn.o_proj.weight.is_meta
    assert view.hf_device_map == SPLIT


@pytest.mark.parametrize("backend", [Backend.HF_VIEW, Backend.HOOK_POINTS])
def test_edited_logits_and_grads_match_unsplit(pair, backend):
    results = []
    for model in pair:
        edit = JolaEdit.for_model(model, JolaConfig(init_std=0.05))
        enc = _batch(model)
        with edit.attached(model, backend) as net:
            if backend is Backend.HF_VIEW:
                logits = net(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
            else:
                logits = net(enc.input_ids, attention_mask=enc.attention_mask)
            logits.logsumexp(-1).mean().backward()
        results.append(
            (
                logits.detach(),
                edit.multiplicative.grad.clone(),
                edit.log_alpha_additive.grad.clone(),
            )
        )
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_training_evaluation_and_generation_match_unsplit(pair):
    config = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, progress=False, lr=5e-2)
    runs = [train_jola(m, MC, MC[:6], config=config, sparsity=SparsityConfig(lam=0.1)) for m in pair]
    h0, h1 = (r.history["val_ce"].to_numpy() for r in runs)
    assert abs(h0 - h1).max() < 1e-4
    assert torch.allclose(runs[0].edit.additive, runs[1].edit.additive, atol=1e-5)
    for protocol in ("loglik", "gen"):
        got = [
            evaluate(
                m,
                MC[:4],
                "arc_easy",
                edit=r.edit,
                protocol=protocol,
                num_beams=1,
                max_new_tokens=3,
                progress=False,
            )
            for m, r in zip(pair, runs, strict=True)
        ]
        assert got[0].items["prediction"].tolist() == got[1].items["prediction"].tolist(), protocol


def test_checkpointed_training_matches_unsplit(pair):
    """Activation checkpointing wraps accelerate's patched layer forwards and gives them back after."""
    config = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, progress=False, lr=5e-2, checkpoint_activations=True)
    layers = hf_view(pair[1]).model.layers
    before = [vars(layer).get("forward") for layer in layers]
    assert any(f is not None for f in before)  # accelerate patched the split layers' forwards
    runs = [train_jola(m, MC, MC[:6], config=config, sparsity=SparsityConfig(lam=0.1)) for m in pair]
    assert [vars(layer).get("forward") for layer in layers] == before
    assert torch.allclose(runs[0].edit.additive, runs[1].edit.additive, atol=1e-5)
    plain = train_jola(
        pair[0], MC, MC[:6], config=replace(config, checkpoint_activations=False), sparsity=SparsityConfig(lam=0.1)
    )
    assert torch.allclose(runs[1].edit.additive, plain.edit.additive, atol=1e-5)


def test_iti_fit_matches_unsplit(pair):
    fitted = [fit_iti(m, MC, ItiConfig(k=3), progress=False) for m in pair]
    assert torch.equal(fitted[0].probe_accuracy, fitted[1].probe_accuracy)
    assert torch.allclose(fitted[0].direction, fitted[1].direction, atol=1e-5)


def test_export_from_split_model_matches_unsplit(pair, tmp_path):
    whole, split = pair
    edit = JolaEdit.for_model(whole, JolaConfig(init_std=0.05))
    outs = [
        jolalens.export_hf_checkpoint(m, edit, tmp_path / name)
        for m, name in zip(pair, ("whole", "split"), strict=True)
    ]
    models = [jolalens.load_model(out, device="cpu") for out in outs]
    tokens = _batch(whole).input_ids
    with torch.no_grad():
        assert torch.allclose(models[0](tokens), models[1](tokens), atol=1e-6)
    with pytest.raises(jolalens.ModelError, match="offloaded"):
        jolalens.merge_edit(split, edit)


@pytest.mark.parametrize("method", ["lora", "lofit", "red", "bitfit"])
def test_baselines_match_unsplit(pair, method):
    from jolalens.baselines import BitFitEdit, LofitEdit, LoraEdit, RedEdit

    cls = {"lora": LoraEdit, "lofit": LofitEdit, "red": RedEdit, "bitfit": BitFitEdit}[method]
    results = []
    for model in pair:
        edit = cls.for_model(model)
        with torch.no_grad():
            for p in edit.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
        enc = _batch(model)
        with edit.attached(model, Backend.HF_VIEW) as net:
            logits = net(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
            logits.logsumexp(-1).mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in edit.parameters()]))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert all(torch.allclose(x, y, atol=1e-6, rtol=1e-4) for x, y in zip(ga, gb, strict=True))


def test_wraps_a_model_the_user_split(checkpoint, pair, tmp_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(checkpoint, device_map=SPLIT, offload_folder=str(tmp_path / "off"))
    wrapped = jolalens.load_model("user-split", hf_model=hf)  # tokenizer from the checkpoint directory
    whole = pair[0]
    enc = _batch(whole)
    with torch.no_grad():
        got = hf_view(wrapped)(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        ref = hf_view(whole)(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    assert hf_view(wrapped).model.layers[1].mlp.down_proj.weight.is_meta
    assert torch.allclose(got, ref, atol=1e-5)
