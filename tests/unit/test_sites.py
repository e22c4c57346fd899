"""Edit sites: one function per site gives the same logits through TransformerLens hook points and
through the Hugging Face view; the hook_z reshape round-trips; bad sites fail clearly."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from jolalens import Backend, hf_view
from jolalens.edit import Edit
from jolalens.errors import ModelError
from jolalens.sites import (
    ModuleHook,
    Projection,
    Site,
    SiteKind,
    from_site_shape,
    hf_hook,
    tl_hook,
    to_site_shape,
)

TOKENS = torch.tensor([[1, 40, 41, 42, 43, 44, 45], [1, 50, 51, 52, 53, 54, 55]])
N_HEADS, D_HEAD = 4, 8  # the tiny model's query heads

SITES = [
    Site(SiteKind.HOOK_Z, 1),
    Site(SiteKind.MLP_OUT, 0),
    Site(SiteKind.RESID_POST, 0),
    *(Site(SiteKind.PROJ_IN, 1, p) for p in Projection),
    *(Site(SiteKind.PROJ_OUT, 0, p) for p in Projection),
]


def _perturbation(site: Site):
    """``x * (1 + w) + w`` with ``w`` of the site's trailing shape: a wrong layout shows."""
    cache: dict[tuple[int, ...], Tensor] = {}

    def fn(x: Tensor) -> Tensor:
        shape = tuple(x.shape[2:])
        if shape not in cache:
            cache[shape] = torch.randn(shape, generator=torch.Generator().manual_seed(7))
        w = cache[shape].to(x.dtype)
        return x * (1 + w) + w

    return fn


def _tl_logits(model, hooks) -> Tensor:
    with torch.no_grad():
        return model.run_with_hooks(TOKENS, fwd_hooks=hooks)


def _hf_logits(model, hooks: list[ModuleHook]) -> Tensor:
    handles = [h.register() for h in hooks]
    try:
        with torch.no_grad():
            return hf_view(model)(TOKENS).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("site", SITES, ids=[f"{s.kind.value}-{s.projection or ''}" for s in SITES])
def test_a_site_function_gives_the_same_logits_on_both_backends(tiny, site):
    base = _hf_logits(tiny, [])
    fn = _perturbation(site)
    hooked = _tl_logits(tiny, [tl_hook(site, fn)])
    viewed = _hf_logits(tiny, [hf_hook(site, fn, hf_view(tiny))])
    assert (viewed - base).abs().max() > 1e-3, "the perturbation must change the output"
    torch.testing.assert_close(hooked, viewed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_tl_logits(tiny, []), base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("site", SITES[:4], ids=lambda s: s.kind.value)
def test_both_backends_hand_the_function_the_same_tensor(tiny, site):
    seen: dict[str, Tensor] = {}

    def grab(name: str):
        def fn(x: Tensor) -> None:
            seen[name] = x.detach().clone()

        return fn

    _tl_logits(tiny, [tl_hook(site, grab("tl"))])
    _hf_logits(tiny, [hf_hook(site, grab("hf"), hf_view(tiny))])
    assert seen["tl"].shape == seen["hf"].shape
    torch.testing.assert_close(seen["tl"], seen["hf"], atol=1e-5, rtol=1e-5)


def test_a_function_returning_none_leaves_the_model_unchanged(tiny):
    base = _hf_logits(tiny, [])
    site = Site(SiteKind.HOOK_Z, 0)
    assert torch.equal(_hf_logits(tiny, [hf_hook(site, lambda z: None, hf_view(tiny))]), base)
    assert torch.equal(_tl_logits(tiny, [tl_hook(site, lambda z: None)]), _tl_logits(tiny, []))


def test_hook_z_reshape_round_trips_and_splits_heads_in_order():
    site = Site(SiteKind.HOOK_Z, 0)
    x = torch.randn(2, 5, N_HEADS * D_HEAD)
    z = to_site_shape(site, x, N_HEADS)
    assert z.shape == (2, 5, N_HEADS, D_HEAD)
    for h in range(N_HEADS):
        assert torch.equal(z[:, :, h], x[:, :, h * D_HEAD : (h + 1) * D_HEAD])
    assert torch.equal(from_site_shape(site, z, tuple(x.shape)), x)
    other = Site(SiteKind.MLP_OUT, 0)
    assert to_site_shape(other, x) is x and from_site_shape(other, x, tuple(x.shape)) is x
    with pytest.raises(ValueError, match="n_heads"):
        to_site_shape(site, x)


def test_hook_names_and_modules(tiny):
    view = hf_view(tiny)
    layer = view.model.layers[1]
    expected = {
        Site(SiteKind.HOOK_Z, 1): ("blocks.1.attn.hook_z", layer.self_attn.o_proj, True),
        Site(SiteKind.MLP_OUT, 1): ("blocks.1.hook_mlp_out", layer.mlp, False),
        Site(SiteKind.RESID_POST, 1): ("blocks.1.hook_resid_post", layer, False),
        Site(SiteKind.PROJ_IN, 1, Projection.UP): ("blocks.1.mlp.in.hook_in", layer.mlp.up_proj, True),
        Site(SiteKind.PROJ_OUT, 1, "q_proj"): ("blocks.1.attn.q.hook_out", layer.self_attn.q_proj, False),
    }
    for site, (name, module, pre) in expected.items():
        assert site.hook_name == name and str(site) == name
        assert site.hf_module(view) is module
        assert site.hf_pre is pre
        assert name in tiny.hook_dict or tiny.hook_dict.get(name) is not None


def test_bad_sites_fail_clearly(tiny):
    with pytest.raises(ValueError, match="unknown site kind 'attn_pattern'.*hook_z"):
        Site("attn_pattern", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative int"):
        Site(SiteKind.HOOK_Z, -1)
    with pytest.raises(ValueError, match="needs a projection"):
        Site(SiteKind.PROJ_OUT, 0)
    with pytest.raises(ValueError, match="unknown projection 'x_proj'"):
        Site(SiteKind.PROJ_IN, 0, "x_proj")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes no projection"):
        Site(SiteKind.HOOK_Z, 0, Projection.Q)
    view = hf_view(tiny)
    with pytest.raises(ModelError, match="layer 5 out of range.*2 decoder layers"):
        Site(SiteKind.HOOK_Z, 5).hf_module(view)
    with pytest.raises(ModelError, match="layer 2 out of range"):
        hf_hook(Site(SiteKind.MLP_OUT, 2), lambda x: x, view)


class _SiteEdit(Edit):
    """A method that only declares its sites (the architecture doc's pattern)."""

    method = "site_test_edit"

    def __init__(self, sites: list[Site]) -> None:
        super().__init__()
        self.sites = sites
        self.model_identity = None

    def site_edits(self) -> list[tuple[Site, Any]]:
        return [(site, _perturbation(site)) for site in self.sites]

    def config_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_dict(cls, model: nn.Module, config: dict[str, Any]) -> Edit:
        return cls([])


def _attached_logits(model, edit: Edit, backend: Backend) -> Tensor:
    with torch.no_grad(), edit.attached(model, backend) as net:
        out = net(TOKENS)
    return out.logits if backend is Backend.HF_VIEW else out


def test_an_edit_declaring_sites_attaches_on_both_backends_and_detaches(tiny):
    base = _attached_logits(tiny, _SiteEdit([]), Backend.HF_VIEW)
    edit = _SiteEdit([Site(SiteKind.HOOK_Z, 0), Site(SiteKind.MLP_OUT, 1), Site(SiteKind.PROJ_OUT, 0, "k_proj")])
    hooked = _attached_logits(tiny, edit, Backend.HOOK_POINTS)
    viewed = _attached_logits(tiny, edit, Backend.HF_VIEW)
    assert (viewed - base).abs().max() > 1e-3
    torch.testing.assert_close(hooked, viewed, atol=1e-5, rtol=1e-5)
    assert torch.equal(_attached_logits(tiny, _SiteEdit([]), Backend.HF_VIEW), base)
    assert not tiny.blocks[0].attn.hook_z.fwd_hooks
    view = hf_view(tiny)
    assert not view.model.layers[0].self_attn.o_proj._forward_pre_hooks
    assert not view.model.layers[1].mlp._forward_hooks


def test_unknown_layer_on_hook_points_and_missing_declaration_fail_clearly(tiny):
    with pytest.raises(KeyError, match="no hook point 'blocks.7.attn.hook_z'"):
        _SiteEdit([Site(SiteKind.HOOK_Z, 7)]).attach(tiny, Backend.HOOK_POINTS)
    with pytest.raises(ModelError, match="layer 7 out of range"):
        _SiteEdit([Site(SiteKind.HOOK_Z, 7)]).attach(tiny, Backend.HF_VIEW)
    assert not tiny.blocks[0].attn.hook_z.fwd_hooks

    class Undeclared(_SiteEdit):
        site_edits = Edit.site_edits  # type: ignore[assignment]

    with pytest.raises(NotImplementedError, match="declares no edit sites"):
        Undeclared([]).attach(tiny, Backend.HOOK_POINTS)
