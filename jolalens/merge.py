"""Fold a trained JoLA edit into ``o_proj``: a hook-free model and a plain HF checkpoint.

With deterministic gates the edit is linear in ``z``: ``W_O ((1 + g_m m) * z + g_a a)`` equals
``(W_O diag(1 + g_m m)) z + W_O (g_a a)``. So the input columns of ``W_O`` are scaled and the
constant ``W_O (g_a a)`` becomes an ``o_proj`` bias; inference then costs nothing extra.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .atomic_dir import atomic_dir
from .errors import EditLoadError, ModelError
from .hf_view import forget_view, hf_view, o_proj_modules
from .jola import JolaEdit
from .validation import nonfinite_tensors

__all__ = ["export_hf_checkpoint", "fold_factors", "merge_edit"]


@torch.no_grad()
def fold_factors(
    edit: JolaEdit, layer_index: int, weight: Float[Tensor, "d_model n_heads_d_head"]
) -> tuple[Tensor, Tensor]:
    """Column scale ``1 + g_m m`` (flattened over heads) and bias ``W_O (g_a a)`` of one edited layer."""
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


def _fold_linear(edit: JolaEdit, i: int, linear: nn.Linear) -> None:
    if linear.weight.is_meta:
        raise ModelError(
            "this o_proj's weights are offloaded (device_map to cpu/disk): merge_edit folds in "
            "place and needs them resident; use export_hf_checkpoint, which loads offloaded "
            "weights one module at a time"
        )
    scale, bias = fold_factors(edit, i, linear.weight)
    if edit.has_additive:
        old = linear.bias.float() if linear.bias is not None else 0.0
        new_bias = (old + bias).to(linear.weight.dtype)
        if linear.bias is None:
            linear.bias = nn.Parameter(new_bias, requires_grad=False)
        else:
            linear.bias.copy_(new_bias)
    # Scale in float32 and round once: a bf16 ``1 + g_m m`` would round small edits to 1.
    linear.weight.copy_((linear.weight.float() * scale[None, :]).to(linear.weight.dtype))


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
        module = bridge_linears[layer]
        if isinstance(module, nn.Linear):
            _fold_linear(edit, i, module)
        else:
            _fold_conv1d(edit, i, module)
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
        w_o.mul_(scale.reshape(n_heads, d_head, 1).to(w_o.dtype))


def _fold_conv1d(edit: JolaEdit, i: int, conv: Any) -> None:
    """GPT-2's ``Conv1D`` (``y = x W + b``, ``W [n_in, d_model]``): rows scaled, bias shifted."""
    scale, bias = fold_factors(edit, i, conv.weight.T)
    if edit.has_additive:
        conv.bias.copy_((conv.bias.float() + bias).to(conv.bias.dtype))
    conv.weight.mul_(scale.to(conv.weight.dtype)[:, None])


def _is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's transposed linear layer (GPT-2 family), with a bias."""
    return type(module).__name__ == "Conv1D" and getattr(module, "bias", None) is not None


def _bridge_o_proj(model: nn.Module) -> list[nn.Module]:
    """The ``nn.Linear`` (or GPT-2 ``Conv1D``) computing each layer's ``o_proj`` in the bridge."""
    bridge: Any = model
    out = []
    for layer in range(bridge.cfg.n_layers):
        o = bridge.blocks[layer].attn.o
        linear = getattr(o, "original_component", o)
        if not isinstance(linear, nn.Linear) and not _is_conv1d(linear):
            raise ModelError(f"blocks.{layer}.attn.o wraps {type(linear).__name__}, not nn.Linear; cannot fold")
        out.append(linear)
    return out


def _cpu_state_dict(view: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of the view's weights; offloaded ones (cpu/disk ``device_map``) load per module."""
    if any(p.is_meta for p in view.parameters()):
        from accelerate.utils.modeling import get_state_dict_offloaded_model

        state = get_state_dict_offloaded_model(view)
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
    return {k: v.detach().to("cpu", copy=True) for k, v in view.state_dict().items()}


@torch.no_grad()
def export_hf_checkpoint(model: nn.Module, edit: JolaEdit, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a standard Hugging Face checkpoint of ``model`` with ``edit`` folded in.

    ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` loads it with no jolalens
    code. An additive edit needs an ``o_proj`` bias: for configs with ``attention_bias`` this is
    switched on and the other attention biases are saved as zeros. The checkpoint is written
    aside and renamed into place when complete; an edit or result holding NaN/inf is refused.
    """
    if not isinstance(edit, JolaEdit):
        method = getattr(edit, "method", type(edit).__name__)
        raise EditLoadError(
            f"export folds JoLA edits into o_proj; this is a {method} edit: attach it with edit.attached(model) instead"
        )
    bad = nonfinite_tensors(dict(edit.named_parameters()))
    if bad:
        raise EditLoadError(f"the edit holds NaN/inf in {bad[:5]}; refusing to export it: retrain the edit")
    edit._check_model(model)
    if not isinstance(getattr(model, "original_model", None), nn.Module):
        raise ModelError(
            f"export_hf_checkpoint needs a TransformerBridge (a Hugging Face model inside); "
            f"{type(model).__name__} has none. Use merge_edit(model, edit) for a hook-free copy."
        )
    view: Any = hf_view(model)
    config = copy.deepcopy(view.config)
    config._attn_implementation = "sdpa"
    if getattr(config, "quantization_config", None) is not None:
        config.quantization_config = None
    state = _cpu_state_dict(view)
    projections = o_proj_modules(view)
    prefix = {id(p): name for name, p in view.named_modules()}
    if edit.has_additive and hasattr(config, "attention_bias"):
        config.attention_bias = True
    with torch.device("meta"):
        skeleton = type(view)(config)
    expected = skeleton.state_dict()
    for i, layer in enumerate(edit.layers):
        name = prefix[id(projections[layer])]
        weight = state[f"{name}.weight"]
        scale, bias = fold_factors(edit, i, weight)
        state[f"{name}.weight"] = (weight.float() * scale[None, :]).to(weight.dtype)
        if edit.has_additive:
            if f"{name}.bias" not in expected:
                raise ModelError(
                    f"{type(view).__name__} has no o_proj bias even with attention_bias; an additive "
                    "edit cannot be exported as a plain checkpoint for it (use merge_edit instead)"
                )
            old = state.get(f"{name}.bias")
            state[f"{name}.bias"] = (bias + (old.float() if old is not None else 0.0)).to(weight.dtype)
    for key, meta_tensor in expected.items():
        if key not in state and key.endswith(".bias"):
            state[key] = torch.zeros(meta_tensor.shape, dtype=meta_tensor.dtype)
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown or missing:
        raise ModelError(f"cannot export: unexpected {unknown[:3]}, missing {missing[:3]}")
    with torch.device("meta"):
        exported = type(view)(config)
    exported.load_state_dict(state, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        exported.tie_weights()
    bad = nonfinite_tensors(state)
    if bad:
        raise EditLoadError(f"folding the edit gave NaN/inf in {bad[:5]}; nothing was written: retrain the edit")
    out = Path(out_dir)
    # complete or absent; an old export is replaced only at the end
    with atomic_dir(out, overwrite=overwrite) as tmp:
        exported.save_pretrained(tmp)
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "jolalens_export.json").write_text(
            json.dumps(
                {
                    "method": edit.method,
                    "model": edit.model_identity,
                    "config": edit.config_dict(),
                    "note": "JoLA edit folded into o_proj weights and biases",
                },
                indent=2,
            )
            + "\n"
        )
    return out
