"""A plain Hugging Face model that shares a ``TransformerBridge``'s weights, with no copy.

The bridge re-implements attention eagerly so that it can expose attention patterns.
JoLA needs none of that to train: its edit sits at the input of ``o_proj``, which is
``hook_z`` flattened over heads. The view runs the same weights through the stock
Hugging Face modules with SDPA attention (and a working KV cache for generation), so
an edit attached to its ``o_proj`` inputs trains at the speed of the frozen model.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
from torch import nn

from .errors import ModelError

__all__ = ["decoder_layers", "forget_view", "hf_view", "o_proj_modules"]

_WRAPPER = "._original_component"
_VIEWS: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def _plain_name(name: str) -> str:
    return name.replace(_WRAPPER, "")


def hf_view(model: nn.Module, attn_implementation: str = "sdpa") -> nn.Module:
    """The Hugging Face causal LM behind a ``TransformerBridge``, unwrapped, sharing weights.

    Parameters are the very tensors of the bridge (``data_ptr`` equal): changes to one are
    changes to the other. The view is built once per bridge and cached.
    """
    cached = _VIEWS.get(model)
    if cached is not None:
        return cached
    wrapped = getattr(model, "original_model", None)
    if not isinstance(wrapped, nn.Module) or not hasattr(wrapped, "config"):
        raise ModelError(
            f"{type(model).__name__} wraps no Hugging Face model (no .original_model); the fast "
            "o_proj path needs a TransformerBridge. Use backend='hook_points' (or leave the "
            "backend unset) for other TransformerLens models."
        )
    hf_config: Any = wrapped.config  # a transformers PretrainedConfig
    config = hf_config.__class__.from_dict(hf_config.to_dict())
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        view = type(wrapped)(config)
    params = {_plain_name(n): p for n, p in wrapped.named_parameters(remove_duplicate=False)}
    buffers = {_plain_name(n): b for n, b in wrapped.named_buffers(remove_duplicate=False)}
    expected_params = dict(view.named_parameters(remove_duplicate=False))
    missing = sorted(set(expected_params) - set(params))
    if missing:
        raise ModelError(f"Cannot map the bridge's weights onto {type(wrapped).__name__}: missing {missing[:3]}")
    for name in expected_params:
        _set(view, name, params[name])
    # Biases the bridge's modules gained after loading (a merged JoLA edit adds one to o_proj).
    for name in sorted(set(params) - set(expected_params)):
        owner, _, leaf = name.rpartition(".")
        if leaf != "bias":
            continue
        try:
            module = view.get_submodule(owner)
        except AttributeError:  # a bridge-only alias path
            continue
        if isinstance(module, nn.Linear) and module.bias is None:
            _set(view, name, params[name])
    for name, buf in list(view.named_buffers(remove_duplicate=False)):
        if name in buffers:
            _set(view, name, buffers[name], buffer=True)
        elif buf.is_meta:
            raise ModelError(f"Cannot map buffer '{name}' of {type(wrapped).__name__} from the bridge")
    _share_accelerate_hooks(wrapped, view)
    view.eval()
    view.requires_grad_(False)
    _VIEWS[model] = view
    return view


def _share_accelerate_hooks(wrapped: nn.Module, view: nn.Module) -> int:
    """Give each view module the accelerate hook of its twin (a model loaded with ``device_map``).

    The hooks move inputs to each module's execution device and load offloaded weights for
    the module's forward; without them a split or offloaded model fails in the view. The hook
    objects are shared, not copied: their ``init_hook`` already ran on the twin, whose placement
    (real tensors, or meta placeholders for offloaded ones) the view module shares.
    """
    targets = dict(view.named_modules())
    shared = 0
    for name, module in wrapped.named_modules():
        # own hooks only: bridge wrappers forward attribute reads to the module they wrap
        hook = module.__dict__.get("_hf_hook")
        target = targets.get(_plain_name(name))
        if hook is None or target is None or "_hf_hook" in target.__dict__:
            continue
        _attach_shared_hook(target, hook)
        shared += 1
    device_map = getattr(wrapped, "hf_device_map", None)
    if device_map:
        dynamic: Any = view  # a plain attribute transformers reads on dispatched models
        dynamic.hf_device_map = dict(device_map)
    return shared


def _attach_shared_hook(module: Any, hook: Any) -> None:
    """``accelerate.hooks.add_hook_to_module`` without ``init_hook`` (see above)."""
    old_forward = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = hook.pre_forward(module, *args, **kwargs)
        if hook.no_grad:
            with torch.no_grad():
                output = old_forward(*args, **kwargs)
        else:
            output = old_forward(*args, **kwargs)
        return hook.post_forward(module, output)

    module._hf_hook = hook
    module._old_forward = old_forward
    module.forward = functools.update_wrapper(forward, old_forward)


def forget_view(model: nn.Module) -> None:
    """Drop the cached view of ``model`` (after its modules changed, e.g. a merge)."""
    _VIEWS.pop(model, None)


def _set(root: nn.Module, dotted: str, value: torch.Tensor, *, buffer: bool = False) -> None:
    *path, leaf = dotted.split(".")
    module: Any = root
    for part in path:
        module = getattr(module, part)
    if buffer:
        persistent = leaf not in module._non_persistent_buffers_set
        module.register_buffer(leaf, value, persistent=persistent)
    else:
        module._parameters[leaf] = value


def decoder_layers(view: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama-style Hugging Face causal LM (``view.model.layers``)."""
    layers = getattr(getattr(view, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"{type(view).__name__} has no model.layers (not a Llama-style decoder)")
    return layers


def o_proj_modules(view: nn.Module) -> list[nn.Linear]:
    """The attention output projection of every decoder layer, in layer order."""
    projections = []
    for i, layer in enumerate(decoder_layers(view)):
        proj = getattr(getattr(layer, "self_attn", None), "o_proj", None)
        if not isinstance(proj, nn.Linear):
            raise ModelError(f"Layer {i} of {type(view).__name__} has no self_attn.o_proj Linear")
        projections.append(proj)
    return projections
