"""Switching single head edits off, and measuring what each contributes."""

import pytest
import torch

from jolalens import Backend, Example, JolaConfig, JolaEdit
from jolalens.analysis import answer_logprobs, edit_head_effects


def _edit(model):
    edit = JolaEdit.for_model(model, JolaConfig(init_std=0.5)).eval()
    with torch.no_grad():
        edit.log_alpha_additive.fill_(-5)
        edit.log_alpha_multiplicative.fill_(-5)
        edit.log_alpha_additive[1, 2] = 4.0
        edit.log_alpha_additive[0, 1] = 4.0
    return edit


EXAMPLES = [Example("say a", "aaa"), Example("say b", "bb"), Example("say c", "c")]


def test_without_heads_closes_exactly_those(tiny):
    edit = _edit(tiny)
    reduced = edit.without_heads([(1, 2, "additive")])
    g = reduced.head_maps()["gate_additive"]
    assert g[1, 2] == 0 and g[0, 1] == 1.0
    assert edit.head_maps()["gate_additive"][1, 2] == 1.0, "the original is untouched"
    with pytest.raises(ValueError, match="no 'multiplicative'"):
        JolaEdit.for_model(tiny, JolaConfig(edit_type="additive")).without_heads([(0, 0, "multiplicative")])


def test_answer_logprobs_matches_direct_computation(tiny):
    edit = _edit(tiny)
    got = answer_logprobs(tiny, EXAMPLES, edit=edit, batch_size=2)
    tok = tiny.tokenizer
    from jolalens.data import tokenize_example

    for k, ex in enumerate(EXAMPLES):
        ids, labels = tokenize_example(tok, ex)
        with torch.no_grad(), edit.attached(tiny, Backend.HOOK_POINTS) as net:
            logp = net(torch.tensor([ids])).log_softmax(-1)[0]
        n_prompt = labels.count(-100)
        expected = torch.stack([logp[p - 1, ids[p]] for p in range(n_prompt, len(ids))]).mean()
        assert got[k].item() == pytest.approx(expected.item(), abs=1e-4)


def test_edit_head_effects_rows(tiny):
    edit = _edit(tiny)
    df = edit_head_effects(tiny, edit, EXAMPLES, top_k=None)
    assert set(df["label"]) == {"L1H2", "L0H1"}
    full = answer_logprobs(tiny, EXAMPLES, edit=edit).mean().item()
    without = answer_logprobs(tiny, EXAMPLES, edit=edit.without_heads([(1, 2, "additive")])).mean().item()
    row = df.set_index("label").loc["L1H2"]
    assert row["effect"] == pytest.approx(full - without, abs=1e-6)
    assert df["effect"].is_monotonic_decreasing
