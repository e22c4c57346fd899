"""A JoLA edit folded into a plain Hugging Face checkpoint, which loads with ``transformers`` alone.

The checkpoint written is a Hugging Face model's:

* ``TransformerBridge``: the model inside it (through :func:`jolalens.hf_view.hf_view`).
* ``HookedTransformer``: it holds no Hugging Face model, so pass the one it was loaded from
  (``hf_model=``). Before anything is folded, the shapes are checked and, on a short probe
  sequence, ``blocks.{l}.attn.hook_z`` of every edited layer must equal the input of the Hugging
  Face projection: a ``HookedTransformer`` loaded with weight processing that changes ``z``
  (``fold_value_biases`` on a model with value biases) or another model is refused.

Where the edit goes, by layout: ``model.layers.N.self_attn.o_proj`` (``nn.Linear``: Llama,
Mistral, Qwen2, Gemma ...), ``transformer.h.N.attn.c_proj`` (GPT-2's ``Conv1D``, with a bias)
and ``gpt_neox.layers.N.attention.dense`` (GPT-NeoX/Pythia). An additive edit needs a bias on
that projection: GPT-2 and GPT-NeoX have one; a config with ``attention_bias`` (Llama, Gemma,
Qwen3 ...) gets it switched on, the other attention biases saved as zeros. Mistral and Qwen2
build ``o_proj`` with ``bias=False`` whatever the config says, so an additive edit cannot be
written as their checkpoint (a multiplicative one can); the error says so.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic_dir import atomic_dir
from .errors import EditLoadError, ModelError
from .fold import folded_projection, is_conv1d
from .hf_view import hf_view
from .jola import JolaEdit
from .models import hook_z_name, model_dims
from .validation import nonfinite_tensors

__all__ = ["attn_out_projections", "export_hf_checkpoint"]

# (decoder layer stack, attention output projection inside one layer)
_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("model.layers", "self_attn.o_proj"),
    ("transformer.h", "attn.c_proj"),
    ("gpt_neox.layers", "attention.dense"),
)
_PROBE_LENGTH = 8


def attn_out_projections(hf_model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every decoder layer's attention output projection, in layer order."""
    for stack_name, proj_name in _LAYOUTS:
        try:
            stack: Any = hf_model.get_submodule(stack_name)
        except AttributeError:
            continue
        out = []
        for i, layer in enumerate(stack):
            try:
                proj: nn.Module | None = layer.get_submodule(proj_name)
            except AttributeError:
                proj = None
            if proj is None or not (isinstance(proj, nn.Linear) or is_conv1d(proj)):
                raise ModelError(
                    f"layer {i} of {type(hf_model).__name__} has no {proj_name} Linear or Conv1D "
                    "to fold the edit into; use merge_edit(model, edit) instead"
                )
            out.append((f"{stack_name}.{i}.{proj_name}", proj))
        return out
    known = ", ".join(f"{stack}.N.{proj}" for stack, proj in _LAYOUTS)
    raise ModelError(
        f"{type(hf_model).__name__} has no attention output projection jolalens can fold into (it knows "
        f"{known}); use merge_edit(model, edit) for a hook-free model instead"
    )


def _no_bias_error(arch: str) -> ModelError:
    return ModelError(
        f"an additive edit adds a constant after each edited attention layer, which needs an o_proj bias, "
        f"and {arch} builds o_proj without one whatever its config says, so no {arch} checkpoint can "
        "hold it: export a multiplicative edit (JolaConfig(edit_type='multiplicative')) or use "
        "merge_edit(model, edit) for a hook-free model in memory"
    )


def _first_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def _check_source(model: nn.Module, hf_model: nn.Module, edit: JolaEdit, projections: list[Any]) -> None:
    """Refuse an ``hf_model`` that is not the one this ``HookedTransformer`` computes (see module doc)."""
    dims = model_dims(model)
    fix = "pass the Hugging Face model this HookedTransformer was loaded from"
    if len(projections) != dims.n_layers:
        raise ModelError(f"hf_model has {len(projections)} layers, the HookedTransformer {dims.n_layers}: {fix}")
    n_in = dims.n_heads * dims.d_head
    for layer in edit.layers:
        name, proj = projections[layer]
        want = (n_in, dims.d_model) if is_conv1d(proj) else (dims.d_model, n_in)
        if tuple(proj.weight.shape) != want:
            raise ModelError(f"hf_model's {name} is {tuple(proj.weight.shape)}, W_O of the edit's model {want}: {fix}")
    tl_model: Any = model
    source: Any = hf_model
    n_vocab = min(int(tl_model.cfg.d_vocab), int(source.get_input_embeddings().weight.shape[0]))
    ids = torch.randint(0, n_vocab, (1, _PROBE_LENGTH), generator=torch.Generator().manual_seed(0))
    want_z: dict[int, Tensor] = {}
    got_z: dict[int, Tensor] = {}

    def grab(layer: int):
        def hook(z: Tensor, hook: Any = None) -> None:
            want_z[layer] = z.detach().flatten(-2).float().cpu()

        return hook

    def grab_input(layer: int):
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            got_z[layer] = args[0].detach().float().cpu()

        return pre_hook

    tl_model.run_with_hooks(
        ids.to(_first_device(model)), return_type=None, fwd_hooks=[(hook_z_name(x), grab(x)) for x in edit.layers]
    )
    handles = [projections[x][1].register_forward_pre_hook(grab_input(x)) for x in edit.layers]
    try:
        hf_model(input_ids=ids.to(_first_device(hf_model)))
    finally:
        for handle in handles:
            handle.remove()
    exact = all(p.dtype == torch.float32 for p in (next(model.parameters()), next(hf_model.parameters())))
    tolerance = 1e-3 if exact else 5e-2
    for layer in edit.layers:
        a, b = want_z[layer], got_z[layer]
        relative = float((a - b).norm() / b.norm().clamp_min(1e-12)) if a.shape == b.shape else float("inf")
        if relative > tolerance:
            raise ModelError(
                f"hf_model's {projections[layer][0]} does not see what {hook_z_name(layer)} holds "
                f"(relative difference {relative:.2g}): {fix}, with the HookedTransformer loaded "
                "without weight processing (HookedTransformer.from_pretrained_no_processing, or "
                "jolalens.load_model(..., model_class='hooked-transformer'))"
            )


def _cpu_state_dict(view: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of the view's weights; offloaded ones (cpu/disk ``device_map``) load per module."""
    if any(p.is_meta for p in view.parameters()):
        from accelerate.utils.modeling import get_state_dict_offloaded_model

        state = get_state_dict_offloaded_model(view)
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
    return {k: v.detach().to("cpu", copy=True) for k, v in view.state_dict().items()}


def _source(model: nn.Module, hf_model: nn.Module | None, edit: JolaEdit) -> tuple[Any, list[Any]]:
    """The Hugging Face model to write and its output projections (checked against ``model``)."""
    if isinstance(getattr(model, "original_model", None), nn.Module):
        if hf_model is not None:
            raise ModelError(
                "hf_model= is for a HookedTransformer; a TransformerBridge exports the Hugging Face "
                "model inside it: leave hf_model out"
            )
        view = hf_view(model)
        return view, attn_out_projections(view)
    if hf_model is None:
        raise ModelError(
            f"a {type(model).__name__} holds no Hugging Face model to export: pass the one it was loaded "
            "from, export_hf_checkpoint(model, edit, out, hf_model=AutoModelForCausalLM.from_pretrained(...)), "
            "or use merge_edit(model, edit) for a hook-free copy of the model"
        )
    if not hasattr(hf_model, "config") or not hasattr(hf_model, "save_pretrained"):
        raise ModelError(
            "hf_model must be a transformers model (AutoModelForCausalLM.from_pretrained(...)), "
            f"got {type(hf_model).__name__}"
        )
    projections = attn_out_projections(hf_model)
    _check_source(model, hf_model, edit, projections)
    return hf_model, projections


@torch.no_grad()
def export_hf_checkpoint(
    model: nn.Module,
    edit: JolaEdit,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    hf_model: nn.Module | None = None,
) -> Path:
    """Write a standard Hugging Face checkpoint of ``model`` with ``edit`` folded in.

    ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` loads it with no jolalens
    code. ``model`` is a ``TransformerBridge`` or, with ``hf_model=`` the Hugging Face model it
    was loaded from, a ``HookedTransformer`` (see the module docstring for the layouts and for
    additive edits on models without an ``o_proj`` bias). The checkpoint is written aside and
    renamed into place when complete; an edit or result holding NaN/inf is refused.
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
    view, projections = _source(model, hf_model, edit)
    config = copy.deepcopy(view.config)
    config._attn_implementation = "sdpa"
    if getattr(config, "quantization_config", None) is not None:
        config.quantization_config = None
    state = _cpu_state_dict(view)
    names = [name for name, _ in projections]
    if edit.has_additive and any(f"{names[layer]}.bias" not in state for layer in edit.layers):
        if not hasattr(config, "attention_bias"):
            raise _no_bias_error(type(view).__name__)
        config.attention_bias = True
    with torch.device("meta"):
        skeleton = type(view)(config)
    expected = skeleton.state_dict()
    for i, layer in enumerate(edit.layers):
        name = names[layer]
        weight, bias = folded_projection(
            edit, i, state[f"{name}.weight"], state.get(f"{name}.bias"), conv1d=is_conv1d(projections[layer][1])
        )
        state[f"{name}.weight"] = weight
        if bias is not None:
            if f"{name}.bias" not in expected:
                raise _no_bias_error(type(view).__name__)
            state[f"{name}.bias"] = bias
    for key, meta_tensor in expected.items():
        if key not in state and key.endswith(".bias"):
            state[key] = torch.zeros(meta_tensor.shape, dtype=meta_tensor.dtype)
    for key in sorted(set(state) - set(expected)):
        if key.endswith(".bias") and not state[key].any():
            del state[key]  # a zero bias a bridge added (TransformerLens 3.9 gives lm_head one)
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
        pattern = names[0].replace(".0.", ".N.", 1)
        (tmp / "jolalens_export.json").write_text(
            json.dumps(
                {
                    "method": edit.method,
                    "model": edit.model_identity,
                    "config": edit.config_dict(),
                    "note": f"JoLA edit folded into the weights and biases of {pattern}",
                },
                indent=2,
            )
            + "\n"
        )
    return out
