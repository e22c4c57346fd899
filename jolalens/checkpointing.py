"""Activation checkpointing of decoder layers for training an edit (``TrainConfig.checkpoint_activations``).

Each layer's forward runs under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant): the
backward keeps only the residual stream entering each layer and recomputes the layer's
internals when it needs them, so training memory no longer grows with 30 layers of attention
and MLP activations, at the cost of a second forward pass through every layer.

The recomputation must see the same randomness as the forward. Global RNG streams (dropout,
LoRA dropout) are restored by ``torch.utils.checkpoint``; an edit's own noise (JoLA's gate
samples come from the edit's generator) is held for the step by :meth:`jolalens.edit.Edit.noise_held`,
which the trainer enters around every forward and backward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointed_layers"]


def _checkpointed_forward(original: Any) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation: nothing would be kept anyway
            return original(*args, **kwargs)
        return checkpoint(original, *args, use_reentrant=False, **kwargs)

    return forward


@contextmanager
def checkpointed_layers(layers: Sequence[nn.Module], enabled: bool = True) -> Iterator[None]:
    """Every module of ``layers`` runs its forward under activation checkpointing inside the block.

    The modules' own ``forward`` comes back afterwards (also on an error); hooks registered on
    them or their submodules keep working (they run again in the recomputation). ``enabled=False``
    is a no-op, so callers need no branch.
    """
    if not enabled:
        yield
        return
    patched: list[nn.Module] = []
    try:
        for layer in layers:
            if "forward" in vars(layer):
                raise RuntimeError(f"{type(layer).__name__} already has a patched forward; not checkpointing it twice")
            # object's own setattr: TransformerLens' bridges forward attribute writes to the wrapped module
            object.__setattr__(layer, "forward", _checkpointed_forward(layer.forward))
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            object.__delattr__(layer, "forward")
