"""Every feature on hook points equals the fast HF view (a bridge with the view switched off).

A model without the view (a ``HookedTransformer``, a GPT-2 bridge) takes exactly these paths;
here the Llama bridge is forced onto them so both can be compared on the same weights.
"""

from __future__ import annotations

import pytest
import torch

import jolalens.runners
from jolalens import JolaConfig, JolaEdit
from jolalens.analysis.edit_effects import edit_head_effects
from jolalens.baselines import ItiConfig, fit_iti
from jolalens.data import Example
from jolalens.edit import Backend
from jolalens.evaluate import evaluate, score_choices
from jolalens.runners import runner_for
from jolalens.train import TrainConfig, train_jola

MC = [
    Example("Pick one: the sky is?", "blue", ("blue", "green")),
    Example("Which is bigger?", "elephant", ("cat", "elephant", "ant")),
    Example("Short?", "true", ("true", "false")),
    Example("x", "A", ("A", "B", "C", "D")),
    Example("Choose a word.", "yes", ("yes", "no way", "maybe not")),
    Example("Is it?", "no", ("yes", "no")),
]


@pytest.fixture
def no_view(monkeypatch):
    """Inside the test, no model has the fast view: every call takes the hook-point path."""

    def force() -> None:
        monkeypatch.setattr(jolalens.runners, "has_hf_view", lambda model: False)

    return force


def _edit(model) -> JolaEdit:
    edit = JolaEdit.for_model(model, JolaConfig(seed=3))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return edit.eval()


def test_forced_runner_is_hook_points(tiny, no_view):
    no_view()
    assert runner_for(tiny).backend is Backend.HOOK_POINTS


def test_loglik_scores_agree(tiny, no_view):
    edit = _edit(tiny)
    fast = score_choices(tiny, MC, edit=edit, batch_size=4, progress=False)
    no_view()
    slow = score_choices(tiny, MC, edit=edit, batch_size=4, progress=False)
    for a, b in zip(fast, slow, strict=True):
        assert a == pytest.approx(b, abs=2e-4)


def test_greedy_generation_agrees(tiny, no_view):
    kw = {"protocol": "gen", "num_beams": 1, "batch_size": 3, "max_new_tokens": 6}
    kw["progress"] = False
    edit = _edit(tiny)
    fast = evaluate(tiny, MC, "boolq", edit=edit, **kw)
    no_view()
    slow = evaluate(tiny, MC, "boolq", edit=edit, **kw)
    assert fast.items["output"].tolist() == slow.items["output"].tolist()
    assert any(len(o) > 0 for o in slow.items["output"])


def test_beam_generation_agrees(tiny, no_view):
    kw = {"protocol": "gen", "num_beams": 3, "batch_size": 4, "max_new_tokens": 5, "progress": False}
    edit = _edit(tiny)
    fast = evaluate(tiny, MC, "boolq", edit=edit, **kw)
    no_view()
    slow = evaluate(tiny, MC, "boolq", edit=edit, **kw)
    assert fast.items["output"].tolist() == slow.items["output"].tolist()


def test_iti_fit_agrees(tiny, no_view):
    cfg = ItiConfig(k=3, alpha=2.0)
    fast = fit_iti(tiny, MC, cfg, progress=False)
    no_view()
    slow = fit_iti(tiny, MC, cfg, progress=False)
    torch.testing.assert_close(fast.direction, slow.direction, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(fast.sigma, slow.sigma, atol=1e-4, rtol=1e-3)


def test_edit_head_effects_agree(tiny, no_view):
    edit = _edit(tiny)
    fast = edit_head_effects(tiny, edit, MC, top_k=3)
    no_view()
    slow = edit_head_effects(tiny, edit, MC, top_k=3)
    assert fast["label"].tolist() == slow["label"].tolist()
    assert fast["effect"].tolist() == pytest.approx(slow["effect"].tolist(), abs=1e-4)


def test_training_agrees(tiny, no_view):
    data = [Example(f"say {c}", c) for c in "abcdefgh"]
    cfg = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, progress=False, lr=0.05)
    fast = train_jola(tiny, data, data[:4], config=cfg)
    no_view()
    slow = train_jola(tiny, data, data[:4], config=cfg)
    want = fast.history["val_ce"].tolist()
    assert slow.history["val_ce"].tolist() == pytest.approx(want, rel=1e-3)


def test_lora_training_agrees(tiny, no_view):
    from jolalens.baselines import LoraConfig, LoraEdit
    from jolalens.train import train_edit

    data = [Example(f"say {c}", c) for c in "abcdefgh"]
    cfg = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, progress=False, lr=0.01)
    lora = LoraConfig(r=2, alpha=4, dropout=0.0)
    fast = train_edit(tiny, LoraEdit.for_model(tiny, lora), data, data[:4], config=cfg)
    no_view()
    assert runner_for(tiny).backend is Backend.HOOK_POINTS
    slow = train_edit(tiny, LoraEdit.for_model(tiny, lora), data, data[:4], config=cfg)
    want = fast.history["val_ce"].tolist()
    assert slow.history["val_ce"].tolist() == pytest.approx(want, rel=1e-4)
    assert want[-1] != want[0]


@pytest.fixture
def gpt2_bridge():
    """A tiny random GPT-2 ``TransformerBridge``: fused QKV, ``Conv1D``, no ``o_proj``."""
    from jolalens.testing import tiny_gpt2_model

    return tiny_gpt2_model(seed=0)


def test_gpt2_bridge_runs_on_hook_points_and_merges(gpt2_bridge):
    from jolalens.data import collate
    from jolalens.merge import merge_edit

    assert runner_for(gpt2_bridge).backend is Backend.HOOK_POINTS
    rows = [([1, 5, 6, 7, 8, 9], [-100] * 4 + [8, 9]), ([1, 5, 6], [-100, -100, 6])]
    edit = _edit(gpt2_bridge)
    runner = runner_for(gpt2_bridge)
    with torch.no_grad(), runner.attached(edit):
        alone = runner(torch.tensor([rows[1][0]]))[0]
        for side in ("right", "left"):
            batch = collate(rows, pad_id=3, padding_side=side)
            logits = runner(batch.input_ids, batch.attention_mask, batch.position_ids)
            got = logits[1][batch.attention_mask[1].bool()]
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-4)
    with runner.attached(edit):  # merged while attached: the copy still comes hook-free
        merged = merge_edit(gpt2_bridge, edit)
    with torch.no_grad():
        torch.testing.assert_close(merged(torch.tensor([rows[1][0]]))[0], alone, atol=1e-5, rtol=1e-4)
    data = [Example(f"say {c}", c) for c in "abcd"]
    cfg = TrainConfig(epochs=1, batch_size=2, warmup_steps=1, progress=False)
    assert train_jola(gpt2_bridge, data, data[:2], config=cfg).history["val_ce"].notna().all()
