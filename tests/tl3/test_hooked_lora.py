"""LoRA (and BitFit) on a classic ``HookedTransformer``, through hook points.

The bridge runs peft's layers around its ``Linear`` modules; the ``HookedTransformer`` reads
each projection's input and adds the low-rank update at its output hook point. Same adapter
weights, same logits. TransformerLens 3.9 environment only (``make tl3-env``).
"""

from __future__ import annotations

import pytest
import torch

from jolalens.testing_hooked import hooked_transformer_available

pytestmark = pytest.mark.skipif(
    not hooked_transformer_available(),
    reason="needs TransformerLens 3.x (HookedTransformer); run it in .venv-tl3 (make tl3-env)",
)

from jolalens import load_edit, load_model  # noqa: E402
from jolalens.baselines import BitFitConfig, BitFitEdit, LoraConfig, LoraEdit  # noqa: E402
from jolalens.data import Example  # noqa: E402
from jolalens.errors import ModelError  # noqa: E402
from jolalens.hf_view import hf_view  # noqa: E402
from jolalens.sites import Projection  # noqa: E402
from jolalens.testing import tiny_gpt2_model, tiny_model  # noqa: E402
from jolalens.testing_hooked import hooked_twin  # noqa: E402
from jolalens.train import TrainConfig, train_edit, validation_ce  # noqa: E402

TOKENS = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(5))
ALL = tuple(Projection)


@pytest.fixture
def pair():
    bridge = tiny_model(seed=0)
    return bridge, hooked_twin(bridge)


def _perturb(edit, scale=0.2):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return edit


@pytest.mark.parametrize("targets", [ALL, (Projection.Q, Projection.V)])
def test_lora_on_the_hooked_twin_equals_peft_on_the_bridge(pair, targets, tmp_path):
    bridge, hooked = pair
    config = LoraConfig(r=4, alpha=8, targets=targets)
    on_bridge = LoraEdit.for_model(bridge, config)
    on_hooked = LoraEdit.for_model(hooked, config)
    assert on_bridge._peft and not on_hooked._peft  # peft layers on the bridge, hooks on the twin
    for key, a in on_bridge.lora_A.items():  # same seed, same draws: peft wraps a stand-in Linear
        assert torch.equal(a.weight, on_hooked.lora_A[key].weight)
    _perturb(on_bridge)
    moved = load_edit(on_bridge.save(tmp_path / "lora"), hooked)  # same file, same names and shapes
    assert set(moved.to_safetensors()) == set(on_bridge.to_safetensors())
    with torch.no_grad():
        with on_bridge.attached(bridge) as view:  # the fast path: peft swapped into the HF view
            want = view(TOKENS).logits
        with moved.attached(hooked) as net:
            got = net(TOKENS)
        base = hooked(TOKENS)
    assert (got - want).abs().max() < 1e-5
    assert (base - want).abs().max() > 1e-2  # the update is not nothing
    names = {name for name, _ in moved.fwd_hooks()}  # the HookedTransformer's own hook points
    assert "blocks.0.ln1.hook_normalized" in names and "blocks.0.attn.hook_q" in names


def test_lora_trained_on_the_hooked_twin_lowers_the_loss_like_the_bridge(pair):
    bridge, hooked = pair
    data = [Example(f"say {c}", c) for c in "abcdefgh"]
    cfg = TrainConfig(epochs=3, batch_size=4, warmup_steps=1, progress=False, lr=0.05)
    config = LoraConfig(r=2, alpha=4, dropout=0.0)
    before = validation_ce(hooked, None, data[:4], config=cfg)
    slow = train_edit(hooked, LoraEdit.for_model(hooked, config), data, data[:4], config=cfg)
    fast = train_edit(bridge, LoraEdit.for_model(bridge, config), data, data[:4], config=cfg)
    assert slow.history["val_ce"].min() < before
    assert slow.history["val_ce"].tolist() == pytest.approx(fast.history["val_ce"].tolist(), rel=1e-3)


def test_lora_on_gpt2_hooked_and_bridge_agree(tmp_path):
    """GPT-2 (fused Conv1D): hook-point LoRA on the bridge and on the HookedTransformer agree."""
    tiny = tiny_gpt2_model(seed=0)
    hf_view(tiny).save_pretrained(tmp_path / "gpt2")
    tiny.tokenizer.save_pretrained(tmp_path / "gpt2")
    bridge = load_model(str(tmp_path / "gpt2"))
    hooked = load_model(str(tmp_path / "gpt2"), model_class="hooked-transformer")
    config = LoraConfig(r=4, alpha=8, targets=(Projection.Q, Projection.K, Projection.V, Projection.O, Projection.UP))
    on_bridge = _perturb(LoraEdit.for_model(bridge, config))
    on_hooked = LoraEdit.for_model(hooked, config)
    on_hooked.load_state_dict(on_bridge.state_dict())
    with torch.no_grad():
        with on_bridge.attached(bridge) as net:
            want = net(TOKENS)
        with on_hooked.attached(hooked) as net:
            assert (net(TOKENS) - want).abs().max() < 1e-5
    with pytest.raises(ModelError, match="gate_proj"):  # GPT-2's MLP has no gate
        LoraEdit.for_model(hooked, LoraConfig(targets=(Projection.GATE,)))


def test_bitfit_on_the_hooked_twin_equals_the_bridge(pair):
    bridge, hooked = pair
    edit = _perturb(BitFitEdit.for_model(bridge, BitFitConfig()))
    with torch.no_grad():
        with edit.attached(bridge) as view:
            want = view(TOKENS).logits
        with edit.attached(hooked) as net:  # projection sites named for the HookedTransformer
            assert (net(TOKENS) - want).abs().max() < 1e-5
