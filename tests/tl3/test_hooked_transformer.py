"""Every feature on a classic ``HookedTransformer`` (TransformerLens 3.x).

Run in the TransformerLens 3.9 environment (``make tl3-env``), where they do not skip:
``.venv-tl3/bin/python -m pytest -q tests/tl3``. Under TransformerLens 4.x they skip.
"""

from __future__ import annotations

import pytest
import torch

from jolalens.testing_hooked import hooked_transformer_available

pytestmark = pytest.mark.skipif(
    not hooked_transformer_available(),
    reason="needs TransformerLens 3.x (HookedTransformer); run it in .venv-tl3 (make tl3-env)",
)

from jolalens import JolaConfig, JolaEdit, load_edit  # noqa: E402
from jolalens.data import Example, collate  # noqa: E402
from jolalens.edit import Backend  # noqa: E402
from jolalens.errors import EditLoadError, ModelError  # noqa: E402
from jolalens.runners import runner_for  # noqa: E402
from jolalens.train import TrainConfig, train_jola, validation_ce  # noqa: E402

MC = [
    Example("Pick one: the sky is?", "blue", ("blue", "green")),
    Example("Which is bigger?", "elephant", ("cat", "elephant", "ant")),
    Example("Short?", "true", ("true", "false")),
    Example("x", "A", ("A", "B", "C", "D")),
    Example("Choose a word.", "yes", ("yes", "no way", "maybe not")),
    Example("Is it?", "no", ("yes", "no")),
]
ROWS = [([1, 5, 6, 7, 8, 9, 10], [-100] * 5 + [9, 10]), ([1, 5, 6], [-100, -100, 6])]


@pytest.fixture(params=["llama", "gpt2"])
def hooked(request):
    from jolalens.testing_hooked import tiny_hooked_model

    return tiny_hooked_model(request.param, seed=0)


@pytest.fixture
def pair():
    """A Llama-style bridge and the HookedTransformer holding the same weights."""
    from jolalens.testing import tiny_model
    from jolalens.testing_hooked import hooked_twin

    bridge = tiny_model(seed=0)
    return bridge, hooked_twin(bridge)


def _edit(model, seed: int = 3) -> JolaEdit:
    edit = JolaEdit.for_model(model, JolaConfig(seed=seed))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return edit.eval()


def test_runner_is_hook_points_and_hf_view_is_refused(hooked):
    assert runner_for(hooked).backend is Backend.HOOK_POINTS
    with pytest.raises(ModelError, match="backend='hook_points'"):
        runner_for(hooked, "hf_view")


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_either_side_equals_the_unpadded_run(hooked, side):
    batch = collate(ROWS, pad_id=3, padding_side=side)
    edit = _edit(hooked)
    runner = runner_for(hooked)
    with torch.no_grad(), runner.attached(edit):
        logits = runner(batch.input_ids, batch.attention_mask, batch.position_ids)
        for r, (ids, _) in enumerate(ROWS):
            alone = runner(torch.tensor([ids]))[0]
            got = logits[r][batch.attention_mask[r].bool()]
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-4)
    assert not torch.isnan(logits).any()


def test_wrong_positions_are_refused(hooked):
    batch = collate(ROWS, pad_id=3, padding_side="right")
    with pytest.raises(ModelError, match="position_ids"):
        runner_for(hooked)(batch.input_ids, batch.attention_mask, batch.position_ids + 1)


@pytest.mark.parametrize("side", ["right", "left"])
def test_train_and_validation_run_and_learn(hooked, side):
    data = [Example(f"say {c}", c) for c in "abcdefgh"]
    cfg = TrainConfig(epochs=3, batch_size=4, warmup_steps=1, progress=False, lr=0.05, padding_side=side, patience=3)
    before = validation_ce(hooked, None, data[:4], config=cfg)
    result = train_jola(hooked, data, data[:4], config=cfg)
    after = validation_ce(hooked, result.edit, data[:4], config=cfg)
    assert after < before
    assert after == pytest.approx(result.history["val_ce"].min(), rel=1e-5)


def test_bridge_and_hooked_twin_agree(pair):
    from jolalens.analysis.edit_effects import edit_head_effects
    from jolalens.baselines import ItiConfig, fit_iti
    from jolalens.evaluate import evaluate, score_choices

    bridge, hooked = pair
    edit = _edit(bridge)
    # logits
    batch = collate(ROWS, pad_id=3, padding_side="left")
    with torch.no_grad():
        outs = []
        for model in (bridge, hooked):
            runner = runner_for(model)
            with runner.attached(edit):
                outs.append(runner(batch.input_ids, batch.attention_mask, batch.position_ids))
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(outs[0][mask], outs[1][mask], atol=2e-4, rtol=1e-4)
    # validation CE, log-likelihood scores, greedy generation, ITI, per-head effects
    data = [Example(f"say {c}", c) for c in "abcdef"]
    cfg = TrainConfig(progress=False)
    assert validation_ce(bridge, edit, data, config=cfg) == pytest.approx(
        validation_ce(hooked, edit, data, config=cfg), rel=1e-4
    )
    for a, b in zip(
        score_choices(bridge, MC, edit=edit, progress=False),
        score_choices(hooked, MC, edit=edit, progress=False),
        strict=True,
    ):
        assert a == pytest.approx(b, abs=2e-4)
    kw = {"protocol": "gen", "num_beams": 1, "batch_size": 3, "max_new_tokens": 5}
    kw["progress"] = False
    assert (
        evaluate(bridge, MC, "boolq", edit=edit, **kw).items["output"].tolist()
        == evaluate(hooked, MC, "boolq", edit=edit, **kw).items["output"].tolist()
    )
    # beam search: the bridge's Hugging Face generate (KV cache) and the HookedTransformer's
    # hook-point beam search (no cache) pick the same beams
    for beams in (2, 4):
        bkw = {**kw, "num_beams": beams, "batch_size": 4}
        assert (
            evaluate(bridge, MC, "boolq", edit=edit, **bkw).items["output"].tolist()
            == evaluate(hooked, MC, "boolq", edit=edit, **bkw).items["output"].tolist()
        )
    icfg = ItiConfig(k=3, alpha=2.0)
    iti_bridge = fit_iti(bridge, MC, icfg, progress=False)
    iti_hooked = fit_iti(hooked, MC, icfg, progress=False)
    torch.testing.assert_close(iti_bridge.direction, iti_hooked.direction, atol=1e-4, rtol=1e-3)
    fx = edit_head_effects(bridge, edit, MC, top_k=3)
    fy = edit_head_effects(hooked, edit, MC, top_k=3)
    assert fx["effect"].tolist() == pytest.approx(fy["effect"].tolist(), abs=1e-4)


def test_ablation_scores_agree_with_the_bridge(pair):
    from jolalens.analysis import ablation_scores

    bridge, hooked = pair
    data = [Example(f"say {c}", c) for c in "abcdef"]
    a = ablation_scores(bridge, data, ablation="mean", batch_size=3)
    b = ablation_scores(hooked, data, ablation="mean", batch_size=3)
    assert a.clean_logprob == pytest.approx(b.clean_logprob, abs=1e-4)
    torch.testing.assert_close(a.logprob_drop, b.logprob_drop, atol=1e-4, rtol=1e-3)


def test_training_gradients_agree_with_the_bridge(pair):
    bridge, hooked = pair
    data = [Example(f"say {c}", c) for c in "abcdefgh"]
    cfg = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, progress=False, lr=0.05)
    a = train_jola(bridge, data, data[:4], config=cfg)
    b = train_jola(hooked, data, data[:4], config=cfg)
    assert a.history["val_ce"].tolist() == pytest.approx(b.history["val_ce"].tolist(), rel=1e-3)


def test_edit_moves_between_classes_by_weights(pair, tmp_path):
    from jolalens.testing import tiny_model
    from jolalens.testing_hooked import hooked_twin

    bridge, hooked = pair
    edit = _edit(bridge)
    on_hooked = load_edit(edit.save(tmp_path / "from_bridge"), hooked)
    back = load_edit(on_hooked.save(tmp_path / "from_hooked"), bridge)
    for x, y in zip(edit.parameters(), back.parameters(), strict=True):
        assert torch.equal(x, y)
    other = hooked_twin(tiny_model(seed=1))
    with pytest.raises(EditLoadError, match="weights differ"):
        load_edit(tmp_path / "from_bridge", other)


def test_merge_into_w_o_gives_the_same_logits(hooked):
    from jolalens.merge import export_hf_checkpoint, merge_edit

    edit = _edit(hooked)
    ids = torch.tensor([ROWS[0][0]])
    with torch.no_grad():
        with edit.attached(hooked):
            want = hooked(ids)
        merged = merge_edit(hooked, edit)
        got = merged(ids)
        plain = hooked(ids)
    assert merged is not hooked and not any(h.fwd_hooks for h in merged.hook_dict.values())
    assert not torch.allclose(plain, want, atol=1e-3)  # the original stays unedited
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ModelError, match="merge_edit"):
        export_hf_checkpoint(hooked, edit, "unused")


def test_bridge_fast_path_still_works_under_tl3():
    from jolalens.runners import has_hf_view
    from jolalens.testing import tiny_model

    bridge = tiny_model(seed=0)
    assert has_hf_view(bridge)
    edit = _edit(bridge)
    batch = collate(ROWS, pad_id=3, padding_side="right")
    mask = batch.attention_mask.bool()
    with torch.no_grad():
        outs = []
        for backend in ("hf_view", "hook_points"):
            runner = runner_for(bridge, backend)
            with runner.attached(edit):
                outs.append(runner(batch.input_ids, batch.attention_mask, batch.position_ids)[mask])
    torch.testing.assert_close(outs[0], outs[1], atol=2e-4, rtol=1e-4)


@pytest.mark.integration
def test_smollm2_as_a_hooked_transformer_agrees_with_its_bridge(embedded, tmp_path):
    from jolalens.evaluate import score_choices
    from jolalens.testing_hooked import hooked_twin

    hooked = hooked_twin(embedded)
    ids = embedded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(hooked(ids), embedded(ids), atol=2e-3, rtol=1e-3)
    edit = _edit(embedded)
    on_hooked = load_edit(edit.save(tmp_path / "e"), hooked)  # same weights: accepted
    fast = score_choices(embedded, MC[:3], edit=edit, progress=False)
    slow = score_choices(hooked, MC[:3], edit=on_hooked, progress=False)
    for a, b in zip(fast, slow, strict=True):
        assert a == pytest.approx(b, abs=5e-3)


def test_docs_examples_run(tmp_path, monkeypatch, capsys):
    """The examples in docs/transformerlens.md run as written, in order, and print what they say."""
    import re
    from pathlib import Path

    doc = Path(__file__).parents[2] / "docs" / "transformerlens.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(doc), "exec"), namespace)
    assert namespace["merged"] is not namespace["hooked"]
    capsys.readouterr()
    for block in blocks[1:]:
        exec(compile(block, str(doc), "exec"), namespace)
    printed = [float(line.removeprefix("tensor(").removesuffix(")")) for line in capsys.readouterr().out.split()]
    assert len(printed) == 2 and max(printed) < 1e-5
    assert type(namespace["hooked"]).__name__ == "HookedTransformer"
