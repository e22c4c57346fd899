"""jolalens against an independent implementation from the equations (tests/oracle.py)."""

import torch

from jolalens import Backend, JolaConfig, JolaEdit
from jolalens.testing import tiny_model
from tests.oracle import OracleJola


def _plain_hf_copy(seed):
    """The same random Llama as tiny_model(seed), built without TransformerLens, eager attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    bridge = tiny_model(seed=seed)
    cfg = LlamaConfig(
        **{k: v for k, v in bridge.original_model.config.to_dict().items() if k in LlamaConfig().to_dict()}
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return bridge, LlamaForCausalLM(cfg).eval()


def test_oracle_logits_and_grads_match(tiny):
    bridge, hf = _plain_hf_copy(0)
    edit = JolaEdit.for_model(bridge, JolaConfig(init_std=0.2)).eval()
    oracle = OracleJola(2, 4, 8)
    with torch.no_grad():
        for layer in range(2):
            oracle.a[layer].copy_(edit.additive[layer])
            oracle.m[layer].copy_(edit.multiplicative[layer])
            oracle.la_a[layer].copy_(edit.log_alpha_additive[layer])
            oracle.la_m[layer].copy_(edit.log_alpha_multiplicative[layer])
    tokens = torch.randint(4, 100, (2, 10), generator=torch.Generator().manual_seed(3))
    target = torch.randint(4, 100, (2, 10), generator=torch.Generator().manual_seed(4))

    handles = oracle.attach(hf)
    ref = hf(tokens).logits
    torch.nn.functional.cross_entropy(ref.flatten(0, 1), target.flatten()).backward()
    for h in handles:
        h.remove()

    with edit.attached(bridge, Backend.HOOK_POINTS) as net:
        got = net(tokens)
    torch.nn.functional.cross_entropy(got.flatten(0, 1), target.flatten()).backward()

    assert torch.allclose(got, ref, atol=1e-5)
    for layer in range(2):
        assert torch.allclose(edit.additive.grad[layer], oracle.a[layer].grad, atol=1e-6, rtol=1e-4)
        assert torch.allclose(edit.multiplicative.grad[layer], oracle.m[layer].grad, atol=1e-6, rtol=1e-4)
        assert torch.allclose(edit.log_alpha_additive.grad[layer], oracle.la_a[layer].grad, atol=1e-6, rtol=1e-4)
        assert torch.allclose(edit.log_alpha_multiplicative.grad[layer], oracle.la_m[layer].grad, atol=1e-6, rtol=1e-4)
