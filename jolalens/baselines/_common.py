"""What the baseline edits share: projection shapes, config (de)serialisation, and strict
per-layer safetensors keys. The sites themselves (``Projection``, ``decoder_layers``) live in
:mod:`jolalens.sites` and are re-exported here."""

from __future__ import annotations

import dataclasses
import random
from abc import abstractmethod
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data import Example, PromptStyle, tokenize_example
from ..edit import Edit
from ..errors import DataError, EditLoadError, ModelError
from ..models import ModelDims, model_dims, model_identity
from ..sites import Projection, decoder_layers

__all__ = ["BaselineEdit", "Projection", "contrast_rows", "decoder_layers", "normalise_sites", "projection_shape"]


def projection_shape(dims: ModelDims, proj: Projection) -> tuple[int, int]:
    """``(d_in, d_out)`` of a projection for a model of shape ``dims``."""
    if proj in (Projection.GATE, Projection.UP, Projection.DOWN) and dims.d_mlp <= 0:
        raise ModelError("this model's d_mlp is unknown; MLP-site edits need it")
    q, kv = dims.n_heads * dims.d_head, dims.n_kv_heads * dims.d_head
    return {
        Projection.Q: (dims.d_model, q),
        Projection.K: (dims.d_model, kv),
        Projection.V: (dims.d_model, kv),
        Projection.O: (q, dims.d_model),
        Projection.GATE: (dims.d_model, dims.d_mlp),
        Projection.UP: (dims.d_model, dims.d_mlp),
        Projection.DOWN: (dims.d_mlp, dims.d_model),
    }[proj]


def normalise_sites(config: Any) -> None:
    """Coerce a frozen config's ``targets`` to distinct :class:`Projection` and ``layers`` to ints."""
    targets = tuple(Projection(t) for t in config.targets)
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be distinct projections, got {config.targets}")
    object.__setattr__(config, "targets", targets)
    if config.layers is not None:
        object.__setattr__(config, "layers", tuple(int(x) for x in config.layers))


def config_to_dict(config: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, StrEnum):
            value = value.value
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else (v.value if isinstance(v, StrEnum) else v) for v in value]
        out[f.name] = value
    return out


def config_from_dict(cls: type, data: dict[str, Any], method: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise EditLoadError(f"unknown {method} config keys {unknown}: saved by a newer jolalens?")
    return cls(**data)


class BaselineEdit(Edit):
    """An edit built from ``ModelDims`` and a frozen config dataclass, saved per layer.

    Subclasses list what they save in :meth:`_saved` as ``key -> (attribute, index)``; the
    key names the site (``blocks.3.hook_mlp_out.bias``) so the file reads without jolalens.
    """

    config_cls: ClassVar[type]

    def __init__(self, dims: ModelDims, config: Any) -> None:
        super().__init__()
        self.dims = dims
        self.config = config
        self.model_identity: dict[str, Any] | None = None

    @classmethod
    def for_model(cls, model: nn.Module, config: Any = None) -> BaselineEdit:
        """A freshly initialised edit shaped for ``model``, in eval mode."""
        edit = cls(model_dims(model), config if config is not None else cls.config_cls())
        edit.model_identity = model_identity(model)
        return edit.eval()

    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)

    @classmethod
    def from_config_dict(cls, model: nn.Module, config: dict[str, Any]) -> BaselineEdit:
        return cls.for_model(model, config_from_dict(cls.config_cls, config, cls.method))

    def _layers(self, layers: tuple[int, ...] | None) -> tuple[int, ...]:
        chosen = tuple(range(self.dims.n_layers)) if layers is None else tuple(layers)
        bad = [x for x in chosen if not 0 <= x < self.dims.n_layers]
        if bad or not chosen:
            raise ValueError(f"layers {list(chosen)} out of range: the model has {self.dims.n_layers} layers")
        return chosen

    @abstractmethod
    def _saved(self) -> dict[str, Tensor]:
        """Readable key -> a live view of the parameter (or buffer) slice saved under it."""

    def to_safetensors(self) -> dict[str, Tensor]:
        return {key: t.detach().float().cpu().contiguous() for key, t in self._saved().items()}

    def load_safetensors(self, tensors: dict[str, Tensor]) -> None:
        expected = self._saved()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise EditLoadError(
                f"saved {self.method} weights do not match its config: missing {missing[:4]}, unexpected {extra[:4]}"
            )
        with torch.no_grad():
            for key, target in expected.items():
                if tuple(tensors[key].shape) != tuple(target.shape):
                    raise EditLoadError(
                        f"{key}: saved shape {tuple(tensors[key].shape)} != expected {tuple(target.shape)}"
                    )
                target.copy_(tensors[key])


def contrast_rows(
    tokenizer: Any,
    train: Sequence[Example],
    *,
    method: str,
    min_questions: int,
    rng: random.Random,
    style: PromptStyle,
    max_length: int,
) -> list[tuple[list[int], list[int]]]:
    """Each question tokenized twice, with its correct answer and then one seeded wrong option.

    The contrast ITI's probes and RePE's reading vectors are fitted on; a question without a
    wrong option to contrast, or fewer than ``min_questions``, is refused naming ``method``.
    ``rng`` draws the wrong options (one draw per question, in order) and is left advanced.
    """
    bad = [i for i, ex in enumerate(train) if not ex.choices or ex.answer not in ex.choices or len(ex.choices) < 2]
    if bad:
        raise DataError(
            f"{method} needs multiple-choice examples (it contrasts each correct answer with a wrong option); "
            f"training example {bad[0]} has no wrong option among >= 2 choices ({len(bad)} in all). "
            f"Generation tasks have no wrong answers to contrast: leave {method} out for them."
        )
    if len(train) < min_questions:
        raise DataError(f"{method} needs at least {min_questions} training questions, got {len(train)}")
    rows = []
    for ex in train:
        assert ex.choices is not None
        wrong = rng.choice([c for c in ex.choices if c != ex.answer])
        for answer in (ex.answer, wrong):
            rows.append(tokenize_example(tokenizer, ex, style=style, max_length=max_length, answer=answer))
    return rows
