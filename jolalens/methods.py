"""The method registry: the one place a method of ``jolalens compare`` is declared.

A method is a :class:`MethodSpec`: its name, a one-line description, its :class:`~jolalens.edit.Edit`
class (registered with :func:`~jolalens.edit.register_method`, so :func:`~jolalens.edit.load_edit`
reloads what it saves), how to fit one point of its hyper-parameter search space, and the search
space itself, ordered from the published recipe outwards. :data:`METHODS` holds every method in
the order tables list them; the comparison runner, its tables, the command line and the benchmark
scripts read it. :func:`register` adds a method of your own::

    register(MethodSpec(name="head_bias", description="...", edit_class=HeadBiasEdit,
                        fit=fit_trained(lambda model, hp, cfg: HeadBiasEdit.for_model(model)),
                        search_space=lambda dims: [{"lr": 1e-2}, {"lr": 5e-2}]))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from torch import nn

from .baselines import (
    BitFitConfig,
    BitFitEdit,
    ItiConfig,
    ItiEdit,
    LofitEdit,
    LoraConfig,
    LoraEdit,
    RedConfig,
    RedEdit,
    ZeroShotEdit,
    fit_iti,
    train_lofit,
)
from .baselines.loreft import LoreftConfig, LoreftEdit, loreft_search_space
from .baselines.repe import RepeConfig, RepeEdit, fit_repe, repe_search_space, with_search_point
from .data import Example
from .edit import _METHODS as _EDIT_CLASSES
from .edit import Edit
from .errors import JolaError
from .jola import EditType, GateMode, JolaConfig, JolaEdit
from .models import ModelDims, model_dims
from .train import TrainConfig, TrainResult, train_edit, train_jola, validation_ce

__all__ = [
    "METHODS",
    "FitFn",
    "Fitted",
    "MethodSpec",
    "default_methods",
    "fit_trained",
    "get_method",
    "register",
    "unregister",
]


@dataclass
class Fitted:
    """One trained (or fitted) edit and its validation cross-entropy."""

    edit: Edit
    val_ce: float
    trainable_parameters: int
    info: dict[str, Any] = field(default_factory=dict)


# fit(model, train, valid, hyper-parameters, TrainConfig, ctx) -> Fitted; ``ctx`` is one run's
# scratch dict, shared by its search points (e.g. ITI's probes, fitted once per seed)
FitFn = Callable[[nn.Module, Sequence[Example], Sequence[Example], dict[str, Any], TrainConfig, dict[str, Any]], Fitted]
SearchSpace = Callable[[ModelDims], list[dict[str, Any]]]


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """What ``jolalens compare`` needs to know about one method.

    ``search_space(dims)``: the ordered hyper-parameter points (a comparison with ``budget=b``
    tries the first ``b``); ``fit``: one point -> :class:`Fitted`; ``edit_class``: the
    :class:`~jolalens.edit.Edit` subclass ``fit`` returns (loadable by ``load_edit``);
    ``needs_choices``: only for multiple-choice tasks (recorded as not applicable elsewhere);
    ``unedited``: the test set is scored on the frozen model (zero-shot); ``default``: one of
    ``jolalens compare``'s default methods; ``ablation_of``: the method this one ablates.
    """

    name: str
    description: str
    edit_class: type[Edit]
    fit: FitFn
    search_space: SearchSpace
    needs_choices: bool = False
    unedited: bool = False
    default: bool = False
    ablation_of: str | None = None


METHODS: dict[str, MethodSpec] = {}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a directory name, and no comma (CLI lists)


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS`; a name already taken, or an edit class that
    ``load_edit`` does not know, is refused with :class:`~jolalens.errors.JolaError`."""
    if not isinstance(spec, MethodSpec):
        raise JolaError(f"register() takes a MethodSpec, got {type(spec).__name__}")
    if not _NAME.fullmatch(spec.name):
        raise JolaError(f"method name {spec.name!r}: use letters, digits, '_', '.' or '-' (it names run directories)")
    if spec.name in METHODS:
        raise JolaError(
            f"method {spec.name!r} is already registered; unregister({spec.name!r}) first or pick a new name"
        )
    edit_name = str(getattr(spec.edit_class, "method", ""))
    if _EDIT_CLASSES.get(edit_name) is not spec.edit_class:
        raise JolaError(
            f"method {spec.name!r}: its edit class {getattr(spec.edit_class, '__name__', spec.edit_class)} is not "
            "registered for load_edit; decorate it with @jolalens.edit.register_method"
        )
    if spec.ablation_of is not None and spec.ablation_of not in METHODS:
        raise JolaError(f"method {spec.name!r} ablates {spec.ablation_of!r}, which is not registered")
    METHODS[spec.name] = spec
    return spec


def unregister(name: str) -> MethodSpec:
    """Remove a method from :data:`METHODS` (and return its spec)."""
    get_method(name)
    return METHODS.pop(name)


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``; an unknown name is a one-line :class:`~jolalens.errors.JolaError`."""
    try:
        return METHODS[name]
    except KeyError:
        raise JolaError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def default_methods() -> tuple[str, ...]:
    """The methods ``jolalens compare`` runs when ``--methods`` is not given, in table order."""
    return tuple(name for name, spec in METHODS.items() if spec.default)


# ---- fit functions ---------------------------------------------------------------------------


def _best_val(result: TrainResult) -> float:
    return float(result.history.loc[result.history["epoch"] == result.best_epoch, "val_ce"].iloc[0])


def fit_trained(make: Callable[[nn.Module, dict[str, Any], TrainConfig], Edit]) -> FitFn:
    """The fit function of a method trained by :func:`~jolalens.train.train_edit` at ``hp["lr"]``:
    ``make(model, hp, cfg)`` builds the untrained edit of one search point."""

    def fit(model, train, valid, hp, cfg, ctx) -> Fitted:
        result = train_edit(model, make(model, hp, cfg), train, valid, config=replace(cfg, lr=hp["lr"]))
        return Fitted(result.edit, _best_val(result), result.edit.n_trainable(), {"best_epoch": result.best_epoch})

    return fit


def _jola_fit(edit_type: EditType = EditType.BOTH, gate_mode: GateMode = GateMode.SEPARATE) -> FitFn:
    """JoLA, or one of the paper's ablations of it (one edit type, a shared gate, no gates)."""

    def fit(model, train, valid, hp, cfg, ctx) -> Fitted:
        jola = JolaConfig(edit_type=edit_type, gate_mode=gate_mode)  # init seed as before: runs stay reproducible
        result = train_jola(model, train, valid, jola=jola, config=replace(cfg, lr=hp["lr"]))
        edit = cast(JolaEdit, result.edit)
        closed = {k: 1 - v for k, v in edit.open_fractions().items()}
        return Fitted(
            edit, _best_val(result), edit.n_trainable(), {"best_epoch": result.best_epoch, "closed_fraction": closed}
        )

    return fit


def _jola_space(dims: ModelDims) -> list[dict[str, Any]]:
    return [{"lr": 5e-3}, {"lr": 2e-2}, {"lr": 1e-3}, {"lr": 5e-2}]


def _n_heads(dims: ModelDims, fraction: float) -> int:
    return max(1, round(fraction * dims.n_layers * dims.n_heads))


def _fit_lofit(model, train, valid, hp, cfg, ctx) -> Fitted:
    k = _n_heads(model_dims(model), hp["k_frac"])
    res = train_lofit(
        model, train, valid, k=k, stage1_lr=hp["stage1_lr"], stage2_lr=hp["stage2_lr"], l1=hp["l1"], config=cfg
    )
    return Fitted(
        res.stage2.edit,
        _best_val(res.stage2),
        res.stage2.edit.n_trainable(),
        {"k": k, "stage1_parameters": res.stage1.edit.n_trainable(), "heads": [f"L{a}H{b}" for a, b in res.heads]},
    )


def _fit_iti(model, train, valid, hp, cfg, ctx) -> Fitted:
    key = ("iti", cfg.seed)
    if key not in ctx:  # probes and directions do not depend on k or alpha: fit them once
        ctx[key] = fit_iti(
            model,
            train,
            ItiConfig(seed=cfg.seed),
            style=cfg.prompt_style,
            max_length=cfg.max_length,
            progress=cfg.progress,
        )
    k = _n_heads(model_dims(model), hp["k_frac"])
    edit = ctx[key].with_strength(k=k, alpha=hp["alpha"])
    return Fitted(
        edit, validation_ce(model, edit, valid, config=cfg), 0, {"k": k, "stored_parameters": edit.n_stored()}
    )


def _fit_repe(model, train, valid, hp, cfg, ctx) -> Fitted:
    key = ("repe", cfg.seed)
    if key not in ctx:  # the directions do not depend on strength or layers: read them once
        ctx[key] = fit_repe(
            model,
            train,
            RepeConfig(seed=cfg.seed),
            style=cfg.prompt_style,
            max_length=cfg.max_length,
            progress=cfg.progress,
        )
    edit = with_search_point(ctx[key], hp)
    info = {"strength": edit.config.strength, "layers": list(edit.layers), "stored_parameters": edit.n_stored()}
    return Fitted(edit, validation_ce(model, edit, valid, config=cfg), 0, info)


def _fit_zeroshot(model, train, valid, hp, cfg, ctx) -> Fitted:
    return Fitted(ZeroShotEdit.for_model(model), validation_ce(model, None, valid, config=cfg), 0)


# ---- the built-in methods, in the order tables list them ----------------------------------

_ITI_SPACE = [
    {"k_frac": 48 / 1024, "alpha": 15.0},
    {"k_frac": 48 / 1024, "alpha": 5.0},
    {"k_frac": 16 / 1024, "alpha": 15.0},
    {"k_frac": 64 / 1024, "alpha": 10.0},
]
_LOFIT_SPACE = [
    {"k_frac": 0.03, "stage1_lr": 5e-3, "l1": 5e-4, "stage2_lr": 1e-2},
    {"k_frac": 0.06, "stage1_lr": 5e-3, "l1": 5e-4, "stage2_lr": 1e-2},
    {"k_frac": 0.03, "stage1_lr": 1e-3, "l1": 1e-3, "stage2_lr": 5e-3},
    {"k_frac": 0.015, "stage1_lr": 5e-3, "l1": 1e-3, "stage2_lr": 1e-2},
]


def _lora(model: nn.Module, hp: dict[str, Any], cfg: TrainConfig) -> Edit:
    return LoraEdit.for_model(model, LoraConfig(r=hp["r"], alpha=2.0 * hp["r"], seed=cfg.seed))


def _builtin_methods() -> list[MethodSpec]:
    specs = [
        MethodSpec(
            name="jola",
            description="gated additive + multiplicative head edits (paper recipe, lr first)",
            edit_class=JolaEdit,
            fit=_jola_fit(),
            search_space=_jola_space,
            default=True,
        ),
        MethodSpec(
            name="iti",
            description="probe-selected heads shifted along the mass-mean direction (K as a fraction of all heads)",
            edit_class=ItiEdit,
            fit=_fit_iti,
            search_space=lambda d: [dict(p) for p in _ITI_SPACE],
            needs_choices=True,
            default=True,
        ),
        MethodSpec(
            name="red",
            description="scale and bias on every MLP output",
            edit_class=RedEdit,
            fit=fit_trained(lambda m, hp, cfg: RedEdit.for_model(m, RedConfig())),
            search_space=lambda d: [{"lr": 5e-3}, {"lr": 1e-2}, {"lr": 1e-3}, {"lr": 2e-2}],
            default=True,
        ),
        MethodSpec(
            name="lofit",
            description="L1-scaled heads, top 3% kept, bias vectors on them",
            edit_class=LofitEdit,
            fit=_fit_lofit,
            search_space=lambda d: [dict(p) for p in _LOFIT_SPACE],
            default=True,
        ),
        MethodSpec(
            name="lora",
            description="peft LoRA on q, k, v, up, down (alpha = 2r, dropout 0.05)",
            edit_class=LoraEdit,
            fit=fit_trained(_lora),
            search_space=lambda d: [
                {"lr": 3e-4, "r": 8},
                {"lr": 1e-3, "r": 8},
                {"lr": 1e-4, "r": 32},
                {"lr": 3e-4, "r": 32},
            ],
            default=True,
        ),
        MethodSpec(
            name="bitfit",
            description="zero-initialised biases on all seven linear maps",
            edit_class=BitFitEdit,
            fit=fit_trained(lambda m, hp, cfg: BitFitEdit.for_model(m, BitFitConfig())),
            search_space=lambda d: [{"lr": 1e-3}, {"lr": 5e-3}, {"lr": 5e-4}, {"lr": 1e-4}],
            default=True,
        ),
        MethodSpec(
            name="zeroshot",
            description="the frozen model, same prompt",
            edit_class=ZeroShotEdit,
            fit=_fit_zeroshot,
            search_space=lambda d: [{}],
            unedited=True,
            default=True,
        ),
        MethodSpec(
            name="loreft",
            description="LoReFT: orthogonal low-rank edit of the residual stream, "
            "first/last 7 prompt tokens, all layers",
            edit_class=LoreftEdit,
            fit=fit_trained(lambda m, hp, cfg: LoreftEdit.for_model(m, LoreftConfig(rank=hp["rank"], seed=cfg.seed))),
            search_space=loreft_search_space,
        ),
        MethodSpec(
            name="repe",
            description="RePE: PCA reading vector per layer (correct - wrong), "
            "added with a strength chosen on validation",
            edit_class=RepeEdit,
            fit=_fit_repe,
            search_space=repe_search_space,
            needs_choices=True,
        ),
    ]
    # the paper's ablations of JoLA: same search space and trainer, one design choice changed
    for name, description, fit in (
        ("jola_additive", "additive edit only (separate gates)", _jola_fit(edit_type=EditType.ADDITIVE)),
        (
            "jola_multiplicative",
            "multiplicative edit only (separate gates)",
            _jola_fit(edit_type=EditType.MULTIPLICATIVE),
        ),
        ("jola_shared_gate", "one gate per head shared by both edits", _jola_fit(gate_mode=GateMode.SHARED)),
        ("jola_no_gate", "no gates (every head edited, no L0 penalty)", _jola_fit(gate_mode=GateMode.NONE)),
    ):
        specs.append(
            MethodSpec(
                name=name,
                description=f"JoLA ablation: {description}",
                edit_class=JolaEdit,
                fit=fit,
                search_space=_jola_space,
                ablation_of="jola",
            )
        )
    return specs


for _spec in _builtin_methods():
    register(_spec)
del _spec
