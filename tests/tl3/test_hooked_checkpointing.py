"""Activation checkpointing on a classic ``HookedTransformer``: its blocks, the same training run.

TransformerLens 3.9 environment only (``make tl3-env``).
"""

from __future__ import annotations

import pytest
import torch

from jolalens.testing_hooked import hooked_transformer_available

pytestmark = pytest.mark.skipif(
    not hooked_transformer_available(),
    reason="needs TransformerLens 3.x (HookedTransformer); run it in .venv-tl3 (make tl3-env)",
)

from jolalens import JolaConfig, SparsityConfig, TrainConfig, train_jola  # noqa: E402
from jolalens.data import Example  # noqa: E402
from jolalens.runners import runner_for  # noqa: E402
from jolalens.testing import tiny_model  # noqa: E402
from jolalens.testing_hooked import hooked_twin  # noqa: E402


def _data(n: int) -> list[Example]:
    letters = "abcdefgh"
    return [Example(f"repeat {letters[i % 8] * (1 + i % 3)}", letters[(i * 3) % 8] * 3) for i in range(n)]


def test_checkpointed_training_on_the_hooked_twin_is_the_same_run():
    hooked = hooked_twin(tiny_model(seed=0))
    assert len(runner_for(hooked).layers()) == hooked.cfg.n_layers

    def train(checkpoint: bool):
        cfg = TrainConfig(
            epochs=2, batch_size=4, warmup_steps=2, lr=5e-2, progress=False, checkpoint_activations=checkpoint
        )
        return train_jola(
            hooked, _data(12), _data(4), jola=JolaConfig(seed=3), config=cfg, sparsity=SparsityConfig(lam=0.5)
        )

    plain, ckpt = train(False), train(True)
    for name, value in plain.edit.state_dict().items():
        torch.testing.assert_close(ckpt.edit.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert not any("forward" in vars(block) for block in hooked.blocks)
