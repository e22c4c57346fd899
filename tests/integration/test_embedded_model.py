"""The embedded SmolLM2-135M-Instruct: loads offline, answers, and matches plain transformers."""

import pytest
import torch

import jolalens

pytestmark = pytest.mark.integration


def test_dims(embedded):
    assert jolalens.model_dims(embedded) == jolalens.ModelDims(30, 9, 3, 64, 576, 1536)


def test_capital_of_france(embedded):
    tok = embedded.tokenizer
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    from jolalens.hf_view import hf_view

    out = hf_view(embedded).generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_bridge_logits_equal_transformers(embedded):
    from transformers import AutoModelForCausalLM

    from jolalens.models import EMBEDDED_MODELS, _converted_checkpoint

    ckpt = _converted_checkpoint(EMBEDDED_MODELS["smollm2-135m-instruct"])
    hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()
    ids = embedded.tokenizer(["The quick brown fox jumps over"], return_tensors="pt").input_ids
    with torch.no_grad():
        ref = hf(ids).logits
        got = embedded(ids)
    assert (ref - got).abs().max().item() < 1e-4
