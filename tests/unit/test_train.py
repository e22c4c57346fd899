"""Training on the tiny model: frozen base, objective, early stopping, padding, errors."""

import math

import pytest
import torch

from jolalens import (
    Backend,
    DataError,
    Example,
    JolaConfig,
    JolaEdit,
    PenaltyMode,
    SparsityConfig,
    TrainConfig,
    TrainingError,
    train_jola,
)
from jolalens.data import collate, tokenize_example
from jolalens.train import answer_cross_entropy, sparsity_penalty

FAST = TrainConfig(epochs=3, batch_size=4, warmup_steps=2, progress=False, lr=5e-2)


def _data(n=16):
    letters = "abcdefgh"
    return [Example(f"repeat {letters[i % 8]}", letters[i % 8] * 3) for i in range(n)]


def test_base_model_frozen_including_unembedding(tiny):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    flags = {n: p.requires_grad for n, p in tiny.named_parameters()}
    seen_requires_grad = []
    original = torch.optim.AdamW

    class Spy(original):
        def __init__(self, groups, **kw):
            groups = list(groups)
            for group in groups:
                seen_requires_grad.extend(group["params"])
            super().__init__(groups, **kw)

    torch.optim.AdamW = Spy
    try:
        result = train_jola(tiny, _data(), _data(8), config=FAST)
    finally:
        torch.optim.AdamW = original
    edit_ids = {id(p) for p in result.edit.parameters()}
    assert {id(p) for p in seen_requires_grad} == edit_ids
    for n, p in tiny.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed"
        assert p.requires_grad == flags[n]
    unembed = tiny.original_model.lm_head.weight if hasattr(tiny.original_model, "lm_head") else None
    assert unembed is not None and torch.equal(unembed, before[[n for n in before if "lm_head" in n][0]])


def test_training_lowers_validation_ce_and_records_history(tiny):
    result = train_jola(
        tiny,
        _data(32),
        _data(8),
        config=TrainConfig(epochs=6, batch_size=8, warmup_steps=2, progress=False, lr=5e-2),
        sparsity=SparsityConfig(lam=0.1),
    )
    h = result.history
    assert list(h.columns[:5]) == ["epoch", "step", "train_ce", "train_penalty", "val_ce"]
    assert h["val_ce"].min() < h["val_ce"].iloc[0]
    # gate_history[0] is the initial state (epoch 0), then one entry per epoch trained
    assert [int(e["epoch"]) for e in result.gate_history] == [0, *h["epoch"].tolist()]
    assert set(result.gate_history[0]) >= {"gate_additive", "p_open_multiplicative", "norm_additive"}
    assert result.best_epoch == int(h.loc[h["val_ce"].idxmin(), "epoch"])
    assert not result.edit.training


def test_best_epoch_is_restored(tiny):
    result = train_jola(
        tiny,
        _data(16),
        _data(8),
        config=TrainConfig(epochs=4, batch_size=4, warmup_steps=1, progress=False, lr=0.5, patience=4),
    )
    # re-measure validation CE with the returned edit: it equals the best epoch's value
    from jolalens.answer_loss import make_batches, mean_answer_ce
    from jolalens.runners import runner_for

    tok = tiny.tokenizer
    rows = [tokenize_example(tok, ex) for ex in _data(8)]
    batches = make_batches(rows, 8, tok.pad_token_id, "right", range(len(rows)))
    with runner_for(tiny, Backend.HF_VIEW).attached(result.edit) as runner:
        val_ce, _ = mean_answer_ce(runner, result.edit, batches, torch.device("cpu"), None)
    assert val_ce == pytest.approx(result.history["val_ce"].min(), rel=1e-5)


def test_same_seed_same_result(tiny):
    a = train_jola(tiny, _data(), _data(8), config=FAST)
    b = train_jola(tiny, _data(), _data(8), config=FAST)
    assert torch.equal(a.edit.additive, b.edit.additive)
    assert a.history["val_ce"].tolist() == b.history["val_ce"].tolist()


def test_hook_points_backend_trains_the_same(tiny):
    a = train_jola(tiny, _data(), _data(8), config=FAST)
    b = train_jola(tiny, _data(), _data(8), config=TrainConfig(**{**FAST.__dict__, "backend": Backend.HOOK_POINTS}))
    assert torch.allclose(a.edit.additive, b.edit.additive, atol=1e-4)


def test_left_and_right_padding_give_same_loss(tiny):
    tok = tiny.tokenizer
    rows = [tokenize_example(tok, ex) for ex in [Example("hi", "abc"), Example("a much longer prompt here", "z")]]
    losses = []
    for side in ("left", "right"):
        batch = collate(rows, tok.pad_token_id, side)
        from jolalens.hf_view import hf_view

        with torch.no_grad():
            logits = hf_view(tiny)(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
            ).logits
        losses.append(answer_cross_entropy(logits, batch.labels)[0])
    assert losses[0].item() == pytest.approx(losses[1].item(), abs=1e-5)


def test_only_answer_tokens_are_supervised(tiny):
    tok = tiny.tokenizer
    ids, labels = tokenize_example(tok, Example("question?", "xyz"))
    supervised = [t for t in labels if t != -100]
    assert supervised == tok("xyz", add_special_tokens=False).input_ids
    assert ids[-3:] == supervised


def test_answer_eos_supervises_the_end_of_sequence_token(tiny):
    tok = tiny.tokenizer
    ids, labels = tokenize_example(tok, Example("question?", "xyz"), eos_id=tok.eos_token_id)
    assert [t for t in labels if t != -100] == [*tok("xyz", add_special_tokens=False).input_ids, tok.eos_token_id]
    plain = train_jola(tiny, _data(), _data(8), config=FAST)
    with_eos = train_jola(tiny, _data(), _data(8), config=TrainConfig(**{**FAST.__dict__, "answer_eos": True}))
    assert with_eos.history["val_ce"].iloc[0] != plain.history["val_ce"].iloc[0], "the EOS token is part of the loss"


def test_answer_eos_is_left_out_of_older_comparison_stamps():
    from jolalens.compare import CompareConfig

    base = CompareConfig(methods=("jola",), tasks=("arc_easy",))
    assert "answer_eos" not in base.protocol_dict()["train"], "a default stamp reads as before the field existed"
    eos = CompareConfig(methods=("jola",), tasks=("arc_easy",), train=TrainConfig(answer_eos=True))
    assert eos.protocol_dict()["train"]["answer_eos"] is True


def test_paper_penalty_value(tiny):
    edit = JolaEdit.for_model(tiny)
    with torch.no_grad():
        edit.log_alpha_additive.zero_()
        edit.log_alpha_multiplicative.fill_(-100.0)
    pen, lam = sparsity_penalty(edit, SparsityConfig(lam=2.0), t=0)
    # half the gates at P=0.6881, half at P~0 (clamped to 1e-6): mean = (0.6881 + 1e-6) / 2
    assert lam == 2.0 and pen.item() == pytest.approx(2.0 * (0.68811 + 1e-6) / 2, abs=1e-4)


def test_released_penalty_value_and_schedule(tiny):
    edit = JolaEdit.for_model(tiny)
    with torch.no_grad():
        edit.log_alpha_additive.zero_()
        edit.log_alpha_multiplicative.zero_()
    cfg = SparsityConfig(mode=PenaltyMode.RELEASED)
    pen, lam = sparsity_penalty(edit, cfg, t=100)
    p = 0.688110
    lam_t = 0.1 * math.exp(-1.0)
    # S_x = sum over 2 layers of mean_h P = 2p; each term divided by L*H = 8
    expected = lam_t * 2 * p / 8 + (1 - lam_t) * 2 * p / 8
    assert lam == pytest.approx(lam_t) and pen.item() == pytest.approx(expected, rel=1e-4)


def test_penalty_closes_gates(tiny):
    cfg = TrainConfig(epochs=5, batch_size=4, warmup_steps=1, progress=False, lr=0.2, patience=5)
    free = train_jola(tiny, _data(), _data(8), config=cfg, sparsity=SparsityConfig(lam=0.0))
    pressed = train_jola(tiny, _data(), _data(8), config=cfg, sparsity=SparsityConfig(lam=50.0))
    p_free = free.gate_history[-1]["p_open_additive"].mean() + free.gate_history[-1]["p_open_multiplicative"].mean()
    p_pressed = (
        pressed.gate_history[-1]["p_open_additive"].mean() + pressed.gate_history[-1]["p_open_multiplicative"].mean()
    )
    assert p_pressed < p_free - 0.2
    closed = 1 - pressed.history[["open_frac_additive", "open_frac_multiplicative"]].iloc[-1].mean()
    assert closed > 0.25


def test_nan_loss_raises_clear_error(tiny):
    with torch.no_grad():
        tiny.original_model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="non-finite loss"):
        train_jola(tiny, _data(), _data(8), config=FAST)


def test_empty_data_rejected(tiny):
    with pytest.raises(DataError, match="training set is empty"):
        train_jola(tiny, [], _data(4), config=FAST)


def test_bad_train_config():
    with pytest.raises(ValueError):
        TrainConfig(lr=0)
    with pytest.raises(ValueError):
        TrainConfig(padding_side="middle")
    with pytest.raises(ValueError):
        TrainConfig(backend="gpu")


def test_jola_config_passed_through(tiny):
    result = train_jola(tiny, _data(), _data(8), jola=JolaConfig(layers=(1,), edit_type="additive"), config=FAST)
    assert result.edit.layers == (1,) and not result.edit.has_multiplicative
