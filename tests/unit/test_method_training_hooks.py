"""Methods own their training behaviour: the generic trainer trains JoLA exactly as train_jola."""

import inspect
import logging

import torch

from jolalens import (
    Example,
    JolaConfig,
    JolaEdit,
    SparsityConfig,
    TrainConfig,
    train_edit,
    train_jola,
)
from jolalens.jola_training import PenaltyMode
from jolalens.train import TrainResult

FAST = TrainConfig(epochs=3, batch_size=4, warmup_steps=2, progress=False, lr=5e-2)


def _data(n=16):
    letters = "abcdefgh"
    return [Example(f"repeat {letters[i % 8]}", letters[i % 8] * 3) for i in range(n)]


def _assert_same_run(a: TrainResult, b: TrainResult) -> None:
    sa, sb = a.edit.state_dict(), b.edit.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.history.equals(b.history)
    assert a.best_epoch == b.best_epoch and a.stopped_early == b.stopped_early
    assert len(a.gate_history) == len(b.gate_history)
    for ma, mb in zip(a.gate_history, b.gate_history, strict=True):
        assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_train_edit_on_a_jola_edit_equals_train_jola(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="jolalens.train"):
        wrapped = train_jola(tiny, _data(), _data(8), config=FAST)
    assert any("JoLA epoch 1/3" in r.getMessage() for r in caplog.records), "epochs are logged"
    edit = JolaEdit.for_model(tiny, JolaConfig(seed=FAST.seed))
    generic = train_edit(tiny, edit, _data(), _data(8), config=FAST)
    _assert_same_run(wrapped, generic)
    assert {"open_frac_additive", "open_frac_multiplicative"} <= set(generic.history.columns)
    assert "closed_fraction" in generic.summary()


def test_released_penalty_schedule_is_owned_by_the_edit(tiny):
    released = SparsityConfig(mode=PenaltyMode.RELEASED)
    wrapped = train_jola(tiny, _data(), _data(8), config=FAST, sparsity=released)
    edit = JolaEdit.for_model(tiny, JolaConfig(seed=FAST.seed), sparsity=released)
    assert edit.penalty_counts_eval_steps
    generic = train_edit(tiny, edit, _data(), _data(8), config=FAST)
    _assert_same_run(wrapped, generic)
    lam = generic.history["lam"].tolist()
    assert lam == sorted(lam, reverse=True) and lam[0] < 0.1, "lam_t decays with the step count"


def test_generic_trainer_applies_the_jola_penalty(tiny):
    def run(lam: float) -> TrainResult:
        edit = JolaEdit.for_model(tiny, JolaConfig(seed=1), sparsity=SparsityConfig(lam=lam))
        return train_edit(tiny, edit, _data(), _data(8), config=FAST)

    free, pressed = run(0.0), run(5.0)
    assert (free.history["train_penalty"] == 0).all()
    assert (pressed.history["train_penalty"] > 0).all()
    assert not torch.equal(free.edit.log_alpha_additive, pressed.edit.log_alpha_additive)
    p_open = [r.edit.head_maps()["p_open_additive"].mean() for r in (free, pressed)]
    assert p_open[1] < p_open[0]


def test_jola_gates_get_the_scaled_learning_rate(tiny):
    edit = JolaEdit.for_model(tiny)
    groups = edit.param_groups(0.01, TrainConfig(gate_lr_scale=7.0))
    assert [g["lr"] for g in groups] == [0.01, 0.07]
    gate_ids = {id(p) for p in groups[1]["params"]}
    assert gate_ids == {id(edit.log_alpha_additive), id(edit.log_alpha_multiplicative)}
    ungated = JolaEdit.for_model(tiny, JolaConfig(gate_mode="none"))
    assert [g["lr"] for g in ungated.param_groups(0.01)] == [0.01]


def test_trainer_never_checks_the_method_type():
    import jolalens.train as train_module

    result = train_module.TrainResult
    for fn in (train_module.train_edit, result.save, result.summary):
        source = inspect.getsource(fn)
        assert "isinstance" not in source and "JolaEdit" not in source, fn.__qualname__
