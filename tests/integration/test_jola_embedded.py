"""JoLA on the embedded SmolLM2-135M: oracle agreement, backends, training, save/load, export."""

import pytest
import torch

from jolalens import (
    Backend,
    JolaConfig,
    JolaEdit,
    SparsityConfig,
    TrainConfig,
    export_hf_checkpoint,
    load_edit,
    train_jola,
)
from tests.oracle import OracleJola

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plain_hf():
    from transformers import AutoModelForCausalLM

    from jolalens.models import EMBEDDED_MODELS, _converted_checkpoint

    ckpt = _converted_checkpoint(EMBEDDED_MODELS["smollm2-135m-instruct"])
    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def tokens(embedded):
    return embedded.tokenizer(
        ["The capital of France is Paris, and the capital of Italy is"], return_tensors="pt"
    ).input_ids


def _random_edit(model, seed=0):
    edit = JolaEdit.for_model(model, JolaConfig(init_std=0.05, seed=seed)).eval()
    with torch.no_grad():
        edit.log_alpha_additive.normal_(0, 2)
        edit.log_alpha_multiplicative.normal_(0, 2)
    return edit


def test_oracle_logits_and_gradients(embedded, plain_hf, tokens):
    edit = _random_edit(embedded)
    oracle = OracleJola(30, 9, 64)
    with torch.no_grad():
        for layer in range(30):
            oracle.a[layer].copy_(edit.additive[layer])
            oracle.m[layer].copy_(edit.multiplicative[layer])
            oracle.la_a[layer].copy_(edit.log_alpha_additive[layer])
            oracle.la_m[layer].copy_(edit.log_alpha_multiplicative[layer])
    handles = oracle.attach(plain_hf)
    try:
        ref = plain_hf(tokens).logits
        ref[0, -1].log_softmax(-1)[12366].backward()
    finally:
        for h in handles:
            h.remove()
    with edit.attached(embedded, Backend.HOOK_POINTS) as net:
        got = net(tokens)
    got[0, -1].log_softmax(-1)[12366].backward()
    assert (got - ref).abs().max().item() < 1e-3
    for layer in (0, 14, 29):
        for mine, theirs in (
            (edit.additive.grad[layer], oracle.a[layer].grad),
            (edit.log_alpha_additive.grad[layer], oracle.la_a[layer].grad),
            (edit.multiplicative.grad[layer], oracle.m[layer].grad),
        ):
            scale = theirs.abs().max().item() + 1e-8
            assert (mine - theirs).abs().max().item() / scale < 1e-2


def test_backends_agree(embedded, tokens):
    edit = _random_edit(embedded, seed=1)
    with torch.no_grad():
        with edit.attached(embedded, Backend.HOOK_POINTS) as net:
            a = net(tokens)
        with edit.attached(embedded, Backend.HF_VIEW) as net:
            b = net(tokens).logits
    assert (a - b).abs().max().item() < 1e-3


@pytest.fixture(scope="module")
def trained(embedded, tmp_path_factory):
    from jolalens.tasks import load_task_splits

    splits = load_task_splits("arc_easy", n_train=200, n_valid=48, n_test=0, seed=42)
    cfg = TrainConfig(epochs=2, lr=2e-2, warmup_steps=2, patience=2, progress=False)
    return train_jola(embedded, splits.train, splits.valid, config=cfg, sparsity=SparsityConfig())


def test_training_lowers_validation_ce_and_closes_gates(trained):
    h = trained.history
    s = trained.summary()
    assert s["val_ce_best"] < s["val_ce_first_epoch"] or s["best_epoch"] == 1
    assert s["val_ce_best"] < 1.0, "200 ARC-e examples teach the answer format: CE well below zero-shot"
    assert max(s["closed_fraction"].values()) > 0.0
    assert len(h) == 2


def test_round_trip_and_export(embedded, trained, tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    trained.save(tmp_path / "run")
    loaded = load_edit(tmp_path / "run" / "edit", embedded)
    with torch.no_grad():
        with trained.edit.attached(embedded, Backend.HF_VIEW) as net:
            ref = net(tokens).logits
        with loaded.attached(embedded, Backend.HF_VIEW) as net:
            again = net(tokens).logits
        assert torch.equal(ref, again)
        out = export_hf_checkpoint(embedded, loaded, tmp_path / "hf")
        plain = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa").eval()
        assert (plain(tokens).logits - ref).abs().max().item() <= 1e-4
