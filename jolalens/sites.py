"""Edit sites: the places in a decoder layer where an edit can sit, on both backends.

A :class:`Site` names one tensor of one layer. It knows that tensor's TransformerLens hook name,
the module of :func:`jolalens.hf_view.hf_view` that computes (or consumes) it, whether the
Hugging Face hook is a forward-pre hook (the module's input) or a forward hook (its output), and
how the Hugging Face tensor is reshaped to the site's shape and back. An edit method gives one
function per site, ``fn(x) -> x'`` on the tensor in the site's shape; :func:`tl_hook` and
:func:`hf_hook` compile it for either backend, so no method writes backend-specific hook code.

Sites, with the tensor their function sees (TransformerLens dimension names):

* ``hook_z``: ``blocks.{l}.attn.hook_z``, ``[batch, pos, head_index, d_head]``. HF view: the
  input of ``self_attn.o_proj`` (a pre hook), ``[batch, pos, head_index * d_head]``, split over
  heads for the function and flattened back.
* ``mlp_out``: ``blocks.{l}.hook_mlp_out``, ``[batch, pos, d_model]``. HF view: the output of
  the layer's ``mlp``.
* ``resid_post``: ``blocks.{l}.hook_resid_post``, ``[batch, pos, d_model]``. HF view: the output
  of decoder layer ``l`` (its first element when the layer returns a tuple).
* ``proj_in`` / ``proj_out``: ``blocks.{l}.{component}.hook_in`` / ``hook_out``, the
  projection's ``[batch, pos, d_in]`` / ``[batch, pos, d_out]`` (a hook point that splits heads,
  such as ``attn.q.hook_out``, ``[batch, pos, head_index, d_head]``, is flattened for the
  function and back). HF view: the input (pre hook) / output of the ``Linear``.

The projection sites need a :class:`Projection` (``q_proj`` ... ``down_proj``). On a
``TransformerBridge`` their hook points are those of the components wrapping each ``Linear``. A
classic ``HookedTransformer`` has no such components; :meth:`Site.hook_name_on` names the hook
points that carry the same tensors there (:func:`hooked_projection_hook`): the input of q/k/v is
``ln1.hook_normalized``, their outputs ``attn.hook_q``/``hook_k``/``hook_v`` (``hook_k``/``hook_v``
with the key-value heads); o reads ``attn.hook_z`` and writes ``hook_attn_out``; gate/up read
``ln2.hook_normalized`` and write ``mlp.hook_pre`` (gate; up in a plain MLP) and
``mlp.hook_pre_linear`` (up in a gated MLP); down reads ``mlp.hook_post`` and writes
``hook_mlp_out``.

A site function may return ``None`` to leave the tensor unchanged (a read-only probe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .errors import ModelError
from .hf_view import decoder_layers
from .models import hook_z_name, is_hooked_transformer

__all__ = [
    "HookFn",
    "ModuleHook",
    "Projection",
    "Site",
    "SiteFn",
    "SiteKind",
    "decoder_layers",
    "from_site_shape",
    "hf_hook",
    "hooked_projection_hook",
    "tl_hook",
    "to_site_shape",
]

HookFn = Callable[..., Any]
# A site function: the tensor in the site's shape -> its replacement (or None: unchanged).
SiteFn = Callable[[Tensor], Tensor | None]


@dataclass(frozen=True)
class ModuleHook:
    """A torch hook on a module of ``hf_view(model)``: ``pre`` hooks see the module's input."""

    module: nn.Module
    fn: Callable[..., Any]
    pre: bool = True

    def register(self) -> RemovableHandle:
        """Register on the module as a forward-pre hook (``pre``) or a forward hook."""
        if self.pre:
            return self.module.register_forward_pre_hook(self.fn)
        return self.module.register_forward_hook(self.fn)


class Projection(StrEnum):
    """The linear maps of a Llama-style decoder layer, by their Hugging Face names."""

    Q = "q_proj"
    K = "k_proj"
    V = "v_proj"
    O = "o_proj"  # noqa: E741
    GATE = "gate_proj"
    UP = "up_proj"
    DOWN = "down_proj"

    @property
    def hf_parent(self) -> str:
        return "self_attn" if self in (Projection.Q, Projection.K, Projection.V, Projection.O) else "mlp"

    @property
    def tl_component(self) -> str:
        """The TransformerBridge component wrapping this projection (``attn.q``, ``mlp.in`` ...)."""
        return {
            Projection.Q: "attn.q",
            Projection.K: "attn.k",
            Projection.V: "attn.v",
            Projection.O: "attn.o",
            Projection.GATE: "mlp.gate",
            Projection.UP: "mlp.in",
            Projection.DOWN: "mlp.out",
        }[self]

    def hook_name(self, layer: int, side: str) -> str:
        """``blocks.{layer}.{component}.hook_in`` or ``hook_out`` on a TransformerBridge."""
        return f"blocks.{layer}.{self.tl_component}.hook_{side}"

    def hf_module(self, view: nn.Module, layer: int) -> nn.Linear:
        module = getattr(getattr(_decoder_layer(view, layer), self.hf_parent, None), self.value, None)
        if not isinstance(module, nn.Module):
            raise ModelError(f"layer {layer} of {type(view).__name__} has no {self.hf_parent}.{self.value}")
        return module  # type: ignore[return-value]


class SiteKind(StrEnum):
    """Which tensor of a decoder layer a :class:`Site` is (see the module docstring)."""

    HOOK_Z = "hook_z"
    MLP_OUT = "mlp_out"
    RESID_POST = "resid_post"
    PROJ_IN = "proj_in"
    PROJ_OUT = "proj_out"

    @property
    def needs_projection(self) -> bool:
        return self in (SiteKind.PROJ_IN, SiteKind.PROJ_OUT)


@dataclass(frozen=True)
class Site:
    """One edit site: ``kind`` at decoder layer ``layer`` (and ``projection`` for ``proj_*``)."""

    kind: SiteKind
    layer: int
    projection: Projection | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", SiteKind(self.kind))
        except ValueError:
            known = ", ".join(k.value for k in SiteKind)
            raise ValueError(f"unknown site kind {self.kind!r}; known kinds: {known}") from None
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"a site's layer must be a non-negative int, got {self.layer!r}")
        if self.kind.needs_projection:
            if self.projection is None:
                raise ValueError(
                    f"a {self.kind.value} site needs a projection (one of {[p.value for p in Projection]})"
                )
            try:
                object.__setattr__(self, "projection", Projection(self.projection))
            except ValueError:
                raise ValueError(
                    f"unknown projection {self.projection!r}; known: {[p.value for p in Projection]}"
                ) from None
        elif self.projection is not None:
            raise ValueError(f"a {self.kind.value} site takes no projection, got {self.projection!r}")

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook point of this site."""
        kind, layer = self.kind, self.layer
        if kind is SiteKind.HOOK_Z:
            return hook_z_name(layer)
        if kind is SiteKind.MLP_OUT:
            return f"blocks.{layer}.hook_mlp_out"
        if kind is SiteKind.RESID_POST:
            return f"blocks.{layer}.hook_resid_post"
        assert self.projection is not None
        return self.projection.hook_name(layer, "in" if kind is SiteKind.PROJ_IN else "out")

    @property
    def hf_pre(self) -> bool:
        """Whether the Hugging Face hook reads the module's input (a forward-pre hook)."""
        return self.kind in (SiteKind.HOOK_Z, SiteKind.PROJ_IN)

    def hook_name_on(self, model: nn.Module | None) -> str:
        """This site's hook point on ``model`` (``None``: :attr:`hook_name`, the bridge's names).

        Projection sites are named differently on a classic ``HookedTransformer``
        (:func:`hooked_projection_hook`); the others are the same on every TransformerLens model.
        """
        if model is None or not self.kind.needs_projection:
            return self.hook_name
        if not is_hooked_transformer(model):
            return self.hook_name
        assert self.projection is not None
        side = "in" if self.kind is SiteKind.PROJ_IN else "out"
        return hooked_projection_hook(model, self.projection, self.layer, side)

    def hf_module(self, view: nn.Module) -> nn.Module:
        """The module of the HF view whose input (``hf_pre``) or output is this site's tensor."""
        if self.kind is SiteKind.RESID_POST:
            return _decoder_layer(view, self.layer)
        if self.kind is SiteKind.MLP_OUT:
            mlp = getattr(_decoder_layer(view, self.layer), "mlp", None)
            if not isinstance(mlp, nn.Module):
                raise ModelError(f"layer {self.layer} of {type(view).__name__} has no mlp")
            return mlp
        projection = Projection.O if self.kind is SiteKind.HOOK_Z else self.projection
        assert projection is not None
        return projection.hf_module(view, self.layer)

    def __str__(self) -> str:
        return self.hook_name


def hooked_projection_hook(model: nn.Module, projection: Projection, layer: int, side: str) -> str:
    """The hook point of a classic ``HookedTransformer`` carrying ``projection``'s input or output.

    ``side`` is ``"in"`` or ``"out"``. Configurations where no hook point carries exactly that
    tensor (separate q/k/v inputs, ungrouped key-value heads, norms after the sublayers, a gate
    on a plain MLP) raise a :class:`ModelError` naming the setting.
    """
    cfg: Any = getattr(model, "cfg", None)
    hooks: Any = getattr(model, "hook_dict", {})
    name = f"{projection.value} of a HookedTransformer"
    post_norm_archs: Any
    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES as post_norm_archs
    except ImportError:  # a TransformerLens without the list
        post_norm_archs = ()

    if getattr(cfg, "use_split_qkv_input", False) or getattr(cfg, "use_attn_in", False):
        raise ModelError(f"{name}: q/k/v get separate inputs here; turn off use_split_qkv_input and use_attn_in")
    post_norm = getattr(cfg, "original_architecture", None) in post_norm_archs
    if post_norm or (side == "out" and getattr(cfg, "use_normalization_before_and_after", False)):
        raise ModelError(f"{name}: a norm sits between the projection and its hook point here; no site carries it")
    attention = projection.hf_parent == "self_attn"
    if side == "in" and projection in (Projection.O, Projection.DOWN):
        return f"blocks.{layer}.attn.hook_z" if projection is Projection.O else f"blocks.{layer}.mlp.hook_post"
    if side == "in":
        normed = f"blocks.{layer}.{'ln1' if attention else 'ln2'}.hook_normalized"
        if normed in hooks:
            return normed
        return f"blocks.{layer}.{'hook_resid_pre' if attention else 'hook_resid_mid'}"  # no norm
    if projection is Projection.O:
        return f"blocks.{layer}.hook_attn_out"
    if projection is Projection.DOWN:
        return f"blocks.{layer}.hook_mlp_out"
    if attention:
        if projection is not Projection.Q and getattr(cfg, "ungroup_grouped_query_attention", False):
            raise ModelError(
                f"{name}: hook_k/hook_v repeat the key-value heads; set cfg.ungroup_grouped_query_attention = False"
            )
        return f"blocks.{layer}.attn.hook_{projection.value[0]}"
    gated = bool(getattr(cfg, "gated_mlp", False))
    if projection is Projection.GATE and not gated:
        raise ModelError(f"{name}: this MLP has no gate (not gated); leave gate_proj out of the targets")
    linear_half = gated and projection is Projection.UP  # a gated MLP's up_proj is W_in, read at hook_pre_linear
    return f"blocks.{layer}.mlp.{'hook_pre_linear' if linear_half else 'hook_pre'}"


def _decoder_layer(view: nn.Module, layer: int) -> nn.Module:
    layers = decoder_layers(view)
    if not 0 <= layer < len(layers):
        raise ModelError(f"layer {layer} out of range: {type(view).__name__} has {len(layers)} decoder layers")
    return layers[layer]


# ---- reshapes ----------------------------------------------------------------------------------
def _n_heads(view: nn.Module) -> int:
    n_heads = getattr(getattr(view, "config", None), "num_attention_heads", None)
    if not isinstance(n_heads, int):
        raise ModelError(f"{type(view).__name__} has no config.num_attention_heads; cannot split o_proj's input")
    return n_heads


def to_site_shape(site: Site, x: Tensor, n_heads: int | None = None) -> Tensor:
    """A tensor as the HF view holds it -> the site's shape.

    ``hook_z``: ``[..., head_index * d_head]`` -> ``[..., head_index, d_head]`` (``n_heads``
    needed). Other sites: unchanged (the HF tensor already has the site's shape).
    """
    if site.kind is not SiteKind.HOOK_Z:
        return x
    if n_heads is None:
        raise ValueError("reshaping to hook_z needs n_heads")
    return x.reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)


def from_site_shape(site: Site, z: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The inverse of :func:`to_site_shape`: back to the HF tensor's ``shape``."""
    return z.reshape(shape) if site.kind is SiteKind.HOOK_Z else z


# ---- compiling a site function for each backend ------------------------------------------------
def tl_hook(site: Site, fn: SiteFn, model: nn.Module | None = None) -> tuple[str, HookFn]:
    """``(hook_name, hook_fn)`` applying ``fn`` at ``site`` on a TransformerLens model.

    ``model`` names the hook points of its class (:meth:`Site.hook_name_on`); without it, the
    bridge's names, which are also the ``HookedTransformer``'s for every non-projection site.

    A projection hook point that splits heads (``attn.q.hook_out`` is ``[batch, pos, head_index,
    d_head]``) is flattened to the projection's ``[batch, pos, d]`` for ``fn`` and back.
    """
    flatten = site.kind.needs_projection

    def site_hook(x: Tensor, hook: Any = None) -> Tensor:
        if flatten and x.dim() == 4:
            out = fn(x.flatten(2))
            return x if out is None else out.reshape(x.shape)
        out = fn(x)
        return x if out is None else out

    site_hook.__name__ = f"{getattr(fn, '__name__', 'edit')}_at_{site.kind.value}"
    return site.hook_name_on(model), site_hook


def hf_hook(site: Site, fn: SiteFn, view: nn.Module) -> ModuleHook:
    """A :class:`ModuleHook` applying ``fn`` at ``site`` on ``hf_view(model)``.

    Pre hooks replace the module's first positional input; forward hooks replace its output, or
    the first element of a tuple output (a decoder layer in some ``transformers`` versions).
    """
    module = site.hf_module(view)
    n_heads = _n_heads(view) if site.kind is SiteKind.HOOK_Z else None

    if site.hf_pre:

        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0]
            out = fn(to_site_shape(site, x, n_heads))
            return None if out is None else (from_site_shape(site, out, tuple(x.shape)), *args[1:])

        return ModuleHook(module, pre_hook, pre=True)

    def forward_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        x = output[0] if isinstance(output, tuple) else output
        out = fn(x)
        if out is None:
            return None
        return (out, *output[1:]) if isinstance(output, tuple) else out

    return ModuleHook(module, forward_hook, pre=False)
