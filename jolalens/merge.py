"""Fold a trained JoLA edit into the attention output projection: a hook-free model.

With deterministic gates the edit is linear in ``z`` (:mod:`jolalens.fold` has the arithmetic):
the input columns of ``W_O`` are scaled and the constant ``W_O (g_a a)`` becomes its bias, so
inference costs nothing extra. :func:`export_hf_checkpoint` (in :mod:`jolalens.export`,
re-exported here) writes the result as a plain Hugging Face checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .export import export_hf_checkpoint
from .fold import fold_factors, folded_projection, is_conv1d
from .hf_view import forget_view, hf_view
from .jola import JolaEdit

__all__ = ["export_hf_checkpoint", "fold_factors", "merge_edit"]


def _fold_module(edit: JolaEdit, i: int, module: Any) -> None:
    """Fold edited layer ``i`` into an ``nn.Linear`` or GPT-2 ``Conv1D`` in place."""
    if module.weight.is_meta:
        raise ModelError(
            "this o_proj's weights are offloaded (device_map to cpu/disk): merge_edit folds in "
            "place and needs them resident; use export_hf_checkpoint, which loads offloaded "
            "weights one module at a time"
        )
    weight, bias = folded_projection(edit, i, module.weight, module.bias, conv1d=is_conv1d(module))
    module.weight.copy_(weight)
    if bias is not None:
        if module.bias is None:
            module.bias = nn.Parameter(bias, requires_grad=False)
        else:
            module.bias.copy_(bias)


@torch.no_grad()
def merge_edit(model: nn.Module, edit: JolaEdit, *, inplace: bool = False) -> nn.Module:
    """A model whose ``o_proj`` weights carry the edit, so it needs no hooks.

    Works on a ``TransformerBridge`` (its ``o_proj`` modules are folded, and the cached
    :func:`hf_view` is rebuilt) and on a ``HookedTransformer`` (each edited layer's ``W_O`` and
    ``b_O``). ``inplace=False`` (default) deep-copies the model first.
    """
    edit._check_model(model)
    target = model if inplace else copy.deepcopy(model)
    reset_hooks = getattr(target, "reset_hooks", None)
    if not inplace and callable(reset_hooks):
        reset_hooks()  # a copy made while hooks were on (the edit's too) would carry them
    if not isinstance(getattr(target, "original_model", None), nn.Module):
        _fold_hooked(edit, target)  # a HookedTransformer: W_O [head, d_head, d_model] and b_O
        return target
    view = hf_view(target)
    bridge_linears = _bridge_o_proj(target)
    for i, layer in enumerate(edit.layers):
        _fold_module(edit, i, bridge_linears[layer])
    forget_view(target)
    del view
    return target


def _fold_hooked(edit: JolaEdit, model: nn.Module) -> None:
    """Fold into ``blocks[l].attn.W_O`` ``[n_heads, d_head, d_model]`` and ``b_O`` in place."""
    blocks: Any = getattr(model, "blocks", None)
    if blocks is None:
        raise ModelError(f"{type(model).__name__} has no blocks; cannot fold the edit into W_O")
    for i, layer in enumerate(edit.layers):
        attn = blocks[layer].attn
        w_o, b_o = getattr(attn, "W_O", None), getattr(attn, "b_O", None)
        if not isinstance(w_o, torch.Tensor) or w_o.ndim != 3 or not isinstance(b_o, torch.Tensor):
            raise ModelError(f"blocks.{layer}.attn has no W_O [head, d_head, d_model] and b_O")
        n_heads, d_head, d_model = w_o.shape
        weight = w_o.detach().reshape(n_heads * d_head, d_model).T  # nn.Linear layout
        scale, bias = fold_factors(edit, i, weight)
        if edit.has_additive:
            b_o.copy_((b_o.float() + bias).to(b_o.dtype))
        w_o.copy_((w_o.float() * scale.reshape(n_heads, d_head, 1)).to(w_o.dtype))


def _bridge_o_proj(model: nn.Module) -> list[nn.Module]:
    """The ``nn.Linear`` (or GPT-2 ``Conv1D``) computing each layer's ``o_proj`` in the bridge."""
    bridge: Any = model
    out = []
    for layer in range(bridge.cfg.n_layers):
        o = bridge.blocks[layer].attn.o
        linear = getattr(o, "original_component", o)
        if not isinstance(linear, nn.Linear) and not is_conv1d(linear):
            raise ModelError(f"blocks.{layer}.attn.o wraps {type(linear).__name__}, not nn.Linear; cannot fold")
        out.append(linear)
    return out
