"""Activation checkpointing: the same training run with less kept for the backward."""

from contextlib import contextmanager

import pytest
import torch

from jolalens import Backend, Example, JolaConfig, JolaEdit, SparsityConfig, TrainConfig, train_jola
from jolalens.checkpointing import checkpointed_layers
from jolalens.data import collate, tokenize_example
from jolalens.runners import runner_for


def _data(n: int) -> list[Example]:
    letters = "abcdefgh"
    # lengths differ, so batches are padded (a 4-D mask: a recomputed layer must not see a KV cache)
    return [Example(f"repeat {letters[i % 8] * (1 + i % 3)} please", letters[(i * 3) % 8] * 3) for i in range(n)]


def _config(backend: Backend, checkpoint: bool, **kw) -> TrainConfig:
    return TrainConfig(
        epochs=2,
        batch_size=4,
        warmup_steps=2,
        lr=5e-2,
        progress=False,
        backend=backend,
        checkpoint_activations=checkpoint,
        **kw,
    )


def _train(model, backend: Backend, checkpoint: bool, per_example_noise: bool = False):
    jola = JolaConfig(seed=3, per_example_noise=per_example_noise)
    return train_jola(
        model,
        _data(12),
        _data(4),
        jola=jola,
        config=_config(backend, checkpoint),
        sparsity=SparsityConfig(lam=0.5),
    )


@pytest.mark.parametrize("backend", [Backend.HF_VIEW, Backend.HOOK_POINTS])
@pytest.mark.parametrize("per_example_noise", [False, True])
def test_checkpointed_training_is_the_same_run(tiny, backend, per_example_noise):
    plain = _train(tiny, backend, False, per_example_noise)
    ckpt = _train(tiny, backend, True, per_example_noise)
    for name, value in plain.edit.state_dict().items():
        torch.testing.assert_close(ckpt.edit.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(
        torch.tensor(ckpt.history["train_ce"].to_numpy()), torch.tensor(plain.history["train_ce"].to_numpy())
    )


def test_without_held_noise_the_recomputation_sees_other_gates(tiny, monkeypatch):
    """The reason for ``noise_held``: without it a recomputed layer draws new gate samples."""

    @contextmanager
    def not_held(self):
        yield

    plain = _train(tiny, Backend.HF_VIEW, False)
    monkeypatch.setattr(JolaEdit, "noise_held", not_held)
    unheld = _train(tiny, Backend.HF_VIEW, True)
    diffs = [
        (unheld.edit.state_dict()[name] - value).abs().max().item() for name, value in plain.edit.state_dict().items()
    ]
    assert max(diffs) > 1e-4


def _saved_bytes(tiny, backend: Backend, checkpoint: bool) -> int:
    """Bytes autograd keeps for the backward of one training forward (outside checkpointed regions)."""
    tok = tiny.tokenizer
    rows = [tokenize_example(tok, Example("repeat a please " * (2 + i), "aaa")) for i in range(4)]
    batch = collate(rows, tok.pad_token_id, "right")
    runner = runner_for(tiny, backend)
    edit = JolaEdit.for_model(tiny, JolaConfig(seed=0))
    edit.train()
    kept = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        kept += t.numel() * t.element_size()
        return t

    with (
        runner.attached(edit),
        checkpointed_layers(runner.layers(), enabled=checkpoint),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        runner(batch.input_ids, batch.attention_mask).sum().backward()
    return kept


@pytest.mark.parametrize("backend", [Backend.HF_VIEW, Backend.HOOK_POINTS])
def test_checkpointing_keeps_less_for_the_backward(tiny, backend):
    plain = _saved_bytes(tiny, backend, False)
    ckpt = _saved_bytes(tiny, backend, True)
    assert ckpt < 0.6 * plain, (plain, ckpt)


def test_layers_get_their_forward_back_even_after_an_error(tiny):
    runner = runner_for(tiny, Backend.HF_VIEW)
    layers = runner.layers()
    with pytest.raises(RuntimeError, match="boom"), checkpointed_layers(layers):
        assert all("forward" in vars(layer) for layer in layers)
        raise RuntimeError("boom")
    assert not any("forward" in vars(layer) for layer in layers)
    with checkpointed_layers(layers, enabled=False):
        assert not any("forward" in vars(layer) for layer in layers)


def test_noise_held_reuses_a_layer_sample_within_the_block_only(tiny):
    edit = JolaEdit.for_model(tiny, JolaConfig(seed=0))
    edit.train()
    with edit.noise_held():
        first = edit.gates(layer_index=0)["additive"]
        assert torch.equal(edit.gates(layer_index=0)["additive"], first)
        other_layer = edit.gates(layer_index=1)["additive"]
    assert not torch.equal(other_layer, first)
    assert not torch.equal(edit.gates(layer_index=0)["additive"], first)


def test_checkpointing_is_not_part_of_a_comparisons_protocol():
    from jolalens.compare import CompareConfig

    def protocol(checkpoint: bool) -> dict:
        cfg = CompareConfig(
            methods=("jola",), tasks=("arc_easy",), seeds=(0,), train=TrainConfig(checkpoint_activations=checkpoint)
        )
        return cfg.protocol_dict()

    assert protocol(True) == protocol(False)


def test_checkpointing_a_gpt2_bridge_on_hook_points_is_the_same_run():
    from jolalens.testing import tiny_gpt2_model

    model = tiny_gpt2_model(seed=0)
    runs = [_train(model, Backend.HOOK_POINTS, checkpoint) for checkpoint in (False, True)]
    for name, value in runs[0].edit.state_dict().items():
        torch.testing.assert_close(runs[1].edit.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
