"""What every edit method is: parameters, hooks, a handle (its directory on disk: :mod:`jolalens.edit_io`).

An edit can attach in two equivalent ways (tested equal for each method):

* ``Backend.HOOK_POINTS``: TransformerLens hook points on the model itself (``hook_z`` ...),
  the interchange format of :meth:`Edit.fwd_hooks`; works on any TransformerLens model.
* ``Backend.HF_VIEW``: the same function on the modules of :func:`jolalens.hf_view.hf_view`
  (e.g. the input of ``o_proj`` for ``hook_z``), which runs the stock Hugging Face model with
  SDPA attention and a KV cache: the fast path for training, evaluation and generation.

A method declares where it acts once, as :meth:`Edit.site_edits` (a
:class:`jolalens.sites.Site` and one function per site); the base class compiles that for both
backends. Run the model that matches the backend: the TransformerLens model for ``HOOK_POINTS``,
``hf_view(model)`` for ``HF_VIEW``. jolalens removes only the hooks it added.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

import torch
from torch import nn

from .edit_io import _METHODS as _METHODS  # the registry load_edit reads; tests reset it here
from .edit_io import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    load_edit,
    prepare_output_dir,
    read_edit_dir,
    register_method,
    write_edit_dir,
)
from .errors import EditLoadError
from .models import identity_mismatches, model_identity
from .sites import HookFn, ModuleHook, Site, SiteFn, hf_hook, tl_hook
from .validation import nonfinite_tensors

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "Backend",
    "answer_positions",
    "current_answer_positions",
    "Edit",
    "EditHandle",
    "HookFn",
    "ModuleHook",
    "Site",
    "SiteFn",
    "load_edit",
    "prepare_output_dir",
    "read_edit_dir",
    "register_method",
    "write_edit_dir",
]

_ANSWER_POSITIONS: ContextVar[torch.Tensor | None] = ContextVar("jolalens_answer_positions", default=None)


@contextmanager
def answer_positions(mask: torch.Tensor | None) -> Iterator[None]:
    """Declare, for the forward passes inside the block, which positions predict answer tokens.

    ``mask`` is ``[batch, pos]`` bool over the *current call's* inputs. jolalens' trainer and
    scorers set it; position-dependent edits (ITI) read it through
    :func:`current_answer_positions`. Position-independent edits ignore it.
    """
    token = _ANSWER_POSITIONS.set(mask)
    try:
        yield
    finally:
        _ANSWER_POSITIONS.reset(token)


def current_answer_positions() -> torch.Tensor | None:
    """The mask set by the innermost :func:`answer_positions` block, or ``None`` outside one."""
    return _ANSWER_POSITIONS.get()


class Backend(StrEnum):
    """Where an edit's hooks go."""

    HOOK_POINTS = "hook_points"
    HF_VIEW = "hf_view"


@dataclass
class EditHandle:
    """The hooks one :meth:`Edit.attach` added; ``remove()`` takes off exactly those."""

    backend: Backend
    _removers: list[Callable[[], None]] = field(default_factory=list)

    def remove(self) -> None:
        while self._removers:
            self._removers.pop()()

    @property
    def active(self) -> bool:
        return bool(self._removers)

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _add_tl_hook(model: nn.Module, name: str, fn: HookFn) -> Callable[[], None]:
    hook_dict = getattr(model, "hook_dict", None)
    hook_point = hook_dict.get(name) if hook_dict is not None else None
    if hook_point is None:
        raise KeyError(f"{type(model).__name__} has no hook point {name!r}")
    before = list(getattr(hook_point, "fwd_hooks", []))
    lens_handle = hook_point.add_hook(fn)
    if lens_handle is None:  # legacy HookedTransformer returns nothing; find what it added
        added = [h for h in getattr(hook_point, "fwd_hooks", []) if h not in before]
        if len(added) != 1:
            raise RuntimeError(f"could not track the hook added at {name!r}")
        lens_handle = added[0]
    torch_handle = lens_handle.hook

    def remove() -> None:
        torch_handle.remove()
        if lens_handle in getattr(hook_point, "fwd_hooks", []):
            hook_point.fwd_hooks.remove(lens_handle)

    return remove


class Edit(nn.Module, ABC):
    """Base class of every edit method (JoLA and the baselines)."""

    method: ClassVar[str]
    model_identity: dict[str, Any] | None  # set by for_model/load; None: attach to any model

    def site_edits(self) -> list[tuple[Site, SiteFn]]:
        """Where this edit acts: one ``(site, fn)`` per edited tensor, for both backends.

        ``fn`` maps the site's tensor, in the shape :mod:`jolalens.sites` documents (``hook_z``:
        ``[batch, pos, head_index, d_head]``), to its replacement. :meth:`fwd_hooks` and
        :meth:`hf_hooks` compile the list for TransformerLens hook points and for the modules of
        ``hf_view(model)``; a method that needs something else overrides those two instead.
        Called once per attach, so values computed here are fixed while attached.
        """
        raise NotImplementedError(
            f"{type(self).__name__} declares no edit sites: define site_edits() (or override fwd_hooks and hf_hooks)"
        )

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        """TransformerLens ``(hook_name, fn)`` pairs applying this edit (from :meth:`site_edits`)."""
        return [tl_hook(site, fn) for site, fn in self.site_edits()]

    def fwd_hooks_for(self, model: nn.Module) -> list[tuple[str, HookFn]]:
        """:meth:`fwd_hooks` with the hook point names of ``model``'s class (what :meth:`attach` adds).

        Projection sites are named differently on a classic ``HookedTransformer``
        (:meth:`jolalens.sites.Site.hook_name_on`); a method that overrides :meth:`fwd_hooks`
        and acts at projection sites overrides this too.
        """
        if type(self).fwd_hooks is Edit.fwd_hooks:
            return [tl_hook(site, fn, model) for site, fn in self.site_edits()]
        return self.fwd_hooks()

    def hf_hooks(self, view: nn.Module) -> list[ModuleHook]:
        """The same edit as torch hooks on the modules of ``hf_view(model)`` (from :meth:`site_edits`)."""
        return [hf_hook(site, fn, view) for site, fn in self.site_edits()]

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The method's config as JSON-ready data."""

    @classmethod
    @abstractmethod
    def from_config_dict(cls, model: nn.Module, config: dict[str, Any]) -> Edit:
        """A freshly initialised edit for ``model`` from :meth:`config_dict` output."""

    # ---- training interface (shared by every method) -------------------------------------
    def n_trainable(self) -> int:
        """Number of parameters the trainer optimises."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # The trainer (jolalens.train.train_edit) asks the edit for everything method-specific
    # through the hooks below; their defaults are neutral (one group, no penalty, no report).
    def param_groups(self, lr: float, config: TrainConfig | None = None) -> list[dict[str, Any]]:
        """Optimizer parameter groups: all trainable parameters at ``lr`` (JoLA: gates faster)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def penalty(self, step: int) -> tuple[torch.Tensor, float]:
        """A regulariser added to the task loss at optimiser step ``step`` and its weight (none)."""
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        return torch.zeros((), device=device), 0.0

    @property
    def penalty_counts_eval_steps(self) -> bool:
        """Whether :meth:`penalty`'s ``step`` also advances on validation batches (no)."""
        return False

    @contextmanager
    def noise_held(self) -> Iterator[None]:
        """Inside the block every random draw the edit makes is made once and reused (none here).

        The trainer holds the noise for each optimiser step, so that a layer recomputed under
        activation checkpointing sees the sample its forward saw (JoLA's gates).
        """
        yield

    def epoch_metrics(self) -> dict[str, float]:
        """Extra columns of the training history, read after each epoch (none)."""
        return {}

    def epoch_maps(self) -> dict[str, torch.Tensor]:
        """Tensors to keep per epoch in ``TrainResult.gate_history`` (none: nothing kept)."""
        return {}

    def summary_extras(self) -> dict[str, Any]:
        """Extra JSON-ready entries of a training run's ``summary.json`` (none)."""
        return {}

    def run_artifacts(self) -> dict[str, Any]:
        """Extra objects a saved run directory holds, by file name, for ``torch.save`` (none)."""
        return {}

    def parameter_summary(self) -> Any:
        """One row per trainable parameter tensor: name, shape, count; a total row last."""
        import pandas as pd

        rows = [
            {"parameter": name, "shape": tuple(p.shape), "count": p.numel()}
            for name, p in self.named_parameters()
            if p.requires_grad
        ]
        rows.append({"parameter": "total", "shape": (), "count": self.n_trainable()})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:  # one line; nn.Module's default lists every parameter
        return f"{type(self).__name__}({self.extra_repr()})"

    def to_safetensors(self) -> dict[str, torch.Tensor]:
        """Readable-keyed tensors to save; override to rename."""
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

    def load_safetensors(self, tensors: dict[str, torch.Tensor]) -> None:
        try:
            result = self.load_state_dict(tensors, strict=False)
        except RuntimeError as exc:  # e.g. a shape mismatch
            first = str(exc).strip().splitlines()[-1].strip()
            raise EditLoadError(
                f"saved weights do not fit this {self.method} edit ({first}); "
                "the config and weights do not belong together: retrain or "
                "restore the edit"
            ) from exc
        if result.missing_keys or result.unexpected_keys:
            raise EditLoadError(
                f"saved weights do not match this {self.method} edit: missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )

    # ---- attaching -------------------------------------------------------------------
    def attach(self, model: nn.Module, backend: Backend | str | None = None) -> EditHandle:
        """Add this edit's hooks; keep the handle and call ``remove()`` (or use ``attached``).

        ``backend=None``: the HF view where it exists (a bridge), hook points otherwise.
        """
        from .runners import resolve_backend

        backend = resolve_backend(model, backend)
        self._check_model(model)
        self._check_device(model)
        handle = EditHandle(backend)
        try:
            if backend is Backend.HOOK_POINTS:
                for name, fn in self.fwd_hooks_for(model):
                    handle._removers.append(_add_tl_hook(model, name, fn))
            else:
                from .hf_view import hf_view

                for hook in self.hf_hooks(hf_view(model)):
                    handle._removers.append(hook.register().remove)
        except Exception:
            handle.remove()
            raise
        return handle

    @contextmanager
    def attached(self, model: nn.Module, backend: Backend | str | None = None) -> Iterator[nn.Module]:
        """Attach for the ``with`` block; yields the model to run for that backend."""
        from .runners import resolve_backend

        backend = resolve_backend(model, backend)
        handle = self.attach(model, backend)
        try:
            if backend is Backend.HF_VIEW:
                from .hf_view import hf_view

                yield hf_view(model)
            else:
                yield model
        finally:
            handle.remove()

    # ---- identity and disk -------------------------------------------------------------
    def _check_model(self, model: nn.Module) -> None:
        expected = getattr(self, "model_identity", None)
        if expected is None:
            return
        problems = identity_mismatches(expected, model_identity(model))
        if problems:
            detail = ", ".join(problems)
            raise EditLoadError(
                f"This {self.method} edit was made for another model ({detail}). Load the model "
                "it was trained on, or train a new edit for this one."
            )

    def _check_device(self, model: nn.Module) -> None:
        """Refuse to attach across devices: the hooks would fail deep inside the forward pass."""
        mine, theirs = _first_device(self), _first_device(model)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(
                f"this {self.method} edit is on {mine} but the model is on {theirs}; "
                f"move the edit first with edit.to({str(theirs)!r})"
            )

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``jola_config.json`` and ``jola_weights.safetensors`` into directory ``path``.

        The directory is written aside and renamed into place when complete; ``overwrite``
        replaces an existing one only then. NaN/inf weights are refused.
        """
        from . import __version__

        tensors = self.to_safetensors()
        bad = nonfinite_tensors(tensors)
        if bad:
            raise EditLoadError(
                f"refusing to save a {self.method} edit with NaN/inf weights in "
                f"{bad[:5]}; retrain it with a lower learning rate"
            )
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "jolalens_version": __version__,
            "model": getattr(self, "model_identity", None),
            "config": self.config_dict(),
        }
        return write_edit_dir(path, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> Self:
        """Load a saved edit strictly onto ``model`` (in eval mode); refuses another method or model."""
        meta, tensors = read_edit_dir(path)
        if meta.get("method") != cls.method:
            raise EditLoadError(
                f"{path} holds a {meta.get('method')!r} edit, not {cls.method!r}; "
                "load it with jolalens.load_edit(path, model)"
            )
        edit = cast(Self, cls.from_config_dict(model, meta.get("config") or {}))
        edit.model_identity = meta["model"]  # read_edit_dir refuses a config without it
        edit._check_model(model)
        edit.model_identity = model_identity(model)
        edit.load_safetensors(tensors)
        device = _first_device(model)
        if device is not None:
            edit.to(device)  # weights load on the CPU; the edit follows the model it is loaded onto
        return edit.eval()


def _first_device(module: nn.Module) -> torch.device | None:
    """The device of a module's first parameter or buffer (``None`` if it has neither).

    Tensors on ``meta`` (offloaded by an accelerate ``device_map``) count only when all are.
    """
    found: torch.device | None = None
    for tensor in (*module.parameters(), *module.buffers()):
        if not tensor.is_meta:
            return tensor.device
        found = found or tensor.device
    return found
