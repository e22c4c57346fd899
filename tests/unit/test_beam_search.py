"""Beam search on hook points (no KV cache) decodes exactly what Hugging Face's ``generate``
decodes on the HF view of the same bridge, edits attached or not."""

from __future__ import annotations

import pytest
import torch

from jolalens import JolaConfig, JolaEdit
from jolalens.data import pad_sequences
from jolalens.edit import Backend
from jolalens.errors import ModelError
from jolalens.hf_view import hf_view
from jolalens.hook_lm import HookPointLM
from jolalens.runners import runner_for
from jolalens.testing import tiny_model

PROMPTS = ["hi", "what is it now?", "abc de", "x", "the sky is blue", "ok"]
EOS, PAD = 2, 3


@pytest.fixture
def eos_model():
    """The tiny bridge with its end-of-sequence logit raised: some beams end early, some run
    to ``max_new_tokens``, so finished hypotheses, length normalisation and stopping all count."""
    model = tiny_model(seed=0)
    weight = hf_view(model).lm_head.weight
    noise = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        weight[EOS] += 0.03 * noise
    return model


def _batch(model):
    tok = model.tokenizer
    return pad_sequences([tok(p).input_ids for p in PROMPTS], PAD, "left")


def _edit(model) -> JolaEdit:
    edit = JolaEdit.for_model(model, JolaConfig(seed=3))
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return edit.eval()


def _both(model, edit, **kw):
    batch = _batch(model)
    kw = {"do_sample": False, "pad_token_id": PAD, "eos_token_id": EOS, **kw}
    runner = runner_for(model, Backend.HOOK_POINTS)
    with torch.inference_mode():
        with runner.attached(edit):
            slow = HookPointLM(runner).generate(batch.input_ids, batch.attention_mask, **kw)
        fast_runner = runner_for(model, Backend.HF_VIEW)
        with fast_runner.attached(edit):
            fast = hf_view(model).generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                temperature=None,
                top_p=None,
                top_k=None,
                **kw,
            )
    return fast, slow, batch.input_ids.shape[1]


@pytest.mark.parametrize("num_beams", [2, 4])
@pytest.mark.parametrize("with_edit", [False, True], ids=["plain", "jola"])
def test_beam_search_equals_hf_generate(eos_model, num_beams, with_edit):
    edit = _edit(eos_model) if with_edit else None
    fast, slow, width = _both(eos_model, edit, num_beams=num_beams, max_new_tokens=10)
    assert fast.shape == slow.shape
    assert torch.equal(fast, slow)
    new = slow[:, width:]
    if not with_edit:  # the case is the intended one: some rows end early, some run to the end
        ended = (new == EOS).any(dim=1)
        assert ended.any() and not ended.all()
        assert new.shape[1] == 10


@pytest.mark.parametrize(
    ("length_penalty", "early_stopping"),
    [(0.0, False), (2.0, False), (-1.0, True), (1.0, True), (2.0, "never"), (0.0, "never")],
)
def test_length_penalty_and_early_stopping_as_hf(eos_model, length_penalty, early_stopping):
    fast, slow, _ = _both(
        eos_model,
        None,
        num_beams=3,
        max_new_tokens=7,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    assert torch.equal(fast, slow)


def test_unsupported_settings_raise(tiny):
    batch = _batch(tiny)
    lm = HookPointLM(runner_for(tiny, Backend.HOOK_POINTS))
    with pytest.raises(ModelError, match="sampling"):
        lm.generate(batch.input_ids, max_new_tokens=2, num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="early_stopping"):
        lm.generate(batch.input_ids, max_new_tokens=2, num_beams=2, early_stopping="sometimes")
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate(batch.input_ids, max_new_tokens=2, num_beams=0)
