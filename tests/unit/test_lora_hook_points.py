"""LoRA through hook points on a model without Llama-style ``Linear`` modules (GPT-2's ``Conv1D``).

The independent reference is the equation itself: LoRA on a projection ``y = x W + b`` is the
projection with ``W + (alpha / r) A^T B^T``, written into a copy of the Hugging Face model.
"""

from __future__ import annotations

import copy

import pytest
import torch

from jolalens.baselines import LoraConfig, LoraEdit
from jolalens.data import Example
from jolalens.edit import Backend
from jolalens.hf_view import hf_view
from jolalens.sites import Projection as P
from jolalens.testing import tiny_gpt2_model
from jolalens.train import TrainConfig, train_edit, validation_ce

TOKENS = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(5))
TARGETS = (P.Q, P.K, P.V, P.O, P.UP, P.DOWN)


def _perturb(edit, scale=0.2):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return edit


@torch.no_grad()
def _merged_by_hand(bridge, edit):
    """A copy of the GPT-2 model with every LoRA update added to its Conv1D weights."""
    hf = copy.deepcopy(hf_view(bridge))
    d = bridge.cfg.d_model

    def update(layer, proj):
        key = f"L{layer}_{proj.value}"
        return edit.scaling * edit.lora_A[key].weight.T @ edit.lora_B[key].weight.T

    for layer in edit.layers:
        block = hf.transformer.h[layer]
        for i, proj in enumerate((P.Q, P.K, P.V)):  # c_attn's output columns are [q | k | v]
            block.attn.c_attn.weight[:, i * d : (i + 1) * d] += update(layer, proj)
        block.attn.c_proj.weight += update(layer, P.O)
        block.mlp.c_fc.weight += update(layer, P.UP)
        block.mlp.c_proj.weight += update(layer, P.DOWN)
    return hf


def test_lora_on_a_gpt2_bridge_is_the_merged_weight():
    bridge = tiny_gpt2_model()
    edit = _perturb(LoraEdit.for_model(bridge, LoraConfig(r=4, alpha=8, targets=TARGETS)))
    assert not edit._peft  # no Llama-style Linear modules: hook points only
    with torch.no_grad():
        with edit.attached(bridge) as net:  # the default backend is hook points here
            got = net(TOKENS)
        want = _merged_by_hand(bridge, edit)(TOKENS).logits
        assert (got - want).abs().max() < 1e-5
        assert (bridge(TOKENS) - want).abs().max() > 1e-2


def test_lora_on_a_gpt2_bridge_trains():
    bridge = tiny_gpt2_model()
    data = [Example(f"say {c}", c) for c in "abcdefgh"]
    cfg = TrainConfig(epochs=3, batch_size=4, warmup_steps=1, progress=False, lr=0.05)
    before = validation_ce(bridge, None, data[:4], config=cfg)
    result = train_edit(bridge, LoraEdit.for_model(bridge, LoraConfig(r=2, alpha=4)), data, data[:4], config=cfg)
    assert result.history["val_ce"].min() < before


def test_hook_built_lora_attaches_to_the_fast_path_too(tiny):
    """An edit built without peft's layers (as on a HookedTransformer) attaches to a Llama
    bridge's HF view through output hooks, with peft's logits."""
    config = LoraConfig(r=4, alpha=8, targets=tuple(P))
    with_peft = _perturb(LoraEdit.for_model(tiny, config))
    hooks_only = LoraEdit(with_peft.dims, config, view=None).eval()
    hooks_only.model_identity = with_peft.model_identity
    hooks_only.load_state_dict(with_peft.state_dict())
    with torch.no_grad():
        with with_peft.attached(tiny, Backend.HF_VIEW) as view:
            want = view(TOKENS).logits
        with hooks_only.attached(tiny, Backend.HF_VIEW) as view:
            assert (view(TOKENS).logits - want).abs().max() < 1e-5
        with hooks_only.attached(tiny, Backend.HOOK_POINTS) as net:
            assert (net(TOKENS) - want).abs().max() < 1e-5


def test_a_missing_hook_point_is_named():
    from jolalens.errors import ModelError

    with pytest.raises(ModelError, match="gate_proj.*leave that projection out"):
        LoraEdit.for_model(tiny_gpt2_model(), LoraConfig(targets=(P.GATE,)))
