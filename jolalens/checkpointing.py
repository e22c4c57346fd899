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

    forward.jolalens_checkpointed = True  # type: ignore[attr-defined]
    return forward


@contextmanager
def checkpointed_layers(layers: Sequence[nn.Module], enabled: bool = True) -> Iterator[None]:
    """Every module of ``layers`` runs its forward under activation checkpointing inside the block.

    The modules' own ``forward`` comes back afterwards (also on an error), including a forward
    that accelerate had patched onto the instance (a model split over devices); hooks registered
    on them or their submodules keep working (they run again in the recomputation). ``enabled=False``
    is a no-op, so callers need no branch.
    """
    if not enabled:
        yield
        return
    patched: list[tuple[nn.Module, Any]] = []  # (layer, the instance forward it had, or None)
    try:
        for layer in layers:
            own = vars(layer).get("forward")  # accelerate's device-map hooks patch forward this way
            if getattr(own, "jolalens_checkpointed", False):
                raise RuntimeError(f"{type(layer).__name__} is already checkpointed; not checkpointing it twice")
            # object's own setattr: TransformerLens' bridges forward attribute writes to the wrapped module
            object.__setattr__(layer, "forward", _checkpointed_forward(layer.forward))
            patched.append((layer, own))
        yield
    finally:
        for layer, own in patched:
            if own is None:
                object.__delattr__(layer, "forward")
            else:
                object.__setattr__(layer, "forward", own)
