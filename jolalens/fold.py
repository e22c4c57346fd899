"""The arithmetic of folding a JoLA edit into an attention output projection.

With deterministic gates the edit is linear in ``z``: ``W_O ((1 + g_m m) * z + g_a a)`` equals
``(W_O diag(1 + g_m m)) z + W_O (g_a a)``. So the input columns of ``W_O`` are scaled and the
constant ``W_O (g_a a)`` is added to the projection's bias. :mod:`jolalens.merge` applies this to
modules in memory, :mod:`jolalens.export` to a checkpoint's tensors.

Two layouts of the projection's weight: ``nn.Linear`` (``[d_model, n_heads * d_head]``, Llama,
GPT-NeoX ...) and Hugging Face's ``Conv1D`` (GPT-2: ``y = x W + b``, ``W [n_heads * d_head,
d_model]``). Scales and biases are computed in float32 and rounded once to the weight's dtype
(a bfloat16 ``1 + g_m m`` would round small edits to 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor, nn

if TYPE_CHECKING:
    from .jola import JolaEdit

__all__ = ["fold_factors", "folded_projection", "is_conv1d"]


@torch.no_grad()
def fold_factors(
    edit: JolaEdit, layer_index: int, weight: Float[Tensor, "d_model n_heads_d_head"]
) -> tuple[Tensor, Tensor]:
    """Column scale ``1 + g_m m`` (flattened over heads) and bias ``W_O (g_a a)`` of one edited layer.

    ``weight`` is in ``nn.Linear`` layout; ``layer_index`` indexes ``edit.layers``.
    """
    gates = edit.gates(deterministic=True, layer_index=layer_index)
    n_in = weight.shape[1]
    scale = torch.ones(n_in, dtype=torch.float32, device=weight.device)
    shift = torch.zeros(n_in, dtype=torch.float32, device=weight.device)
    if edit.has_multiplicative:
        m = edit.multiplicative[layer_index].float().to(weight.device)
        scale = (1 + gates["multiplicative"].float().to(weight.device)[:, None] * m).reshape(n_in)
    if edit.has_additive:
        a = edit.additive[layer_index].float().to(weight.device)
        shift = (gates["additive"].float().to(weight.device)[:, None] * a).reshape(n_in)
    return scale, weight.float() @ shift


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's transposed linear layer (GPT-2 family), with a bias."""
    return type(module).__name__ == "Conv1D" and getattr(module, "bias", None) is not None


@torch.no_grad()
def folded_projection(
    edit: JolaEdit, layer_index: int, weight: Tensor, bias: Tensor | None, *, conv1d: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The projection's new ``(weight, bias)`` with edited layer ``layer_index`` folded in.

    ``conv1d``: ``weight`` is ``[n_in, d_model]`` (GPT-2's ``Conv1D``), else ``[d_model, n_in]``.
    The bias is ``None`` only if it was and the edit adds nothing; an additive edit on a
    projection without a bias gets a new one (the caller decides whether the model can hold it).
    """
    linear_weight = weight.T if conv1d else weight
    scale, shift = fold_factors(edit, layer_index, linear_weight)
    if conv1d:
        new_weight = (weight.float() * scale[:, None]).to(weight.dtype)
    else:
        new_weight = (weight.float() * scale[None, :]).to(weight.dtype)
    new_bias = bias
    if edit.has_additive:
        old = bias.float() if bias is not None else torch.zeros_like(shift)
        new_bias = (old + shift.to(old.device)).to(weight.dtype)
    return new_weight, new_bias
