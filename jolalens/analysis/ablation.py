"""Score every attention head by what the frozen model loses when its ``hook_z`` is ablated.

The metric is per example: the mean log-prob of the reference answer tokens (labels != -100,
as in training) and, for examples with ``choices``, whether the gold choice has the highest
mean log-prob of all choices (accuracy). A head's score is ``metric(clean) - metric(ablated)``
averaged over examples: positive means the head helps.

Ablation replaces ``z[:, t, h, :]`` at **all positions** t of one head:

* ``zero``: ``z <- 0`` (removes the head's ``W_O`` term; the o_proj bias, if any, stays);
* ``mean``: ``z <- mu[l, h]``, averaged over every non-pad position of the reference examples
  (the IOI/ARENA convention, and the default);
* ``resample``: ``z(x) <- z(x')`` position by position, ``x'`` another example (a seeded
  derangement); positions past the end of ``x'`` take ``mu`` instead.

Two equivalent backends run it: ``"hook_points"`` patches ``blocks.{l}.attn.hook_z`` of the
TransformerLens model; ``"hf_view"`` (default, faster) patches the input of ``o_proj`` in
:func:`jolalens.hf_view.hf_view`, which is ``hook_z`` flattened over heads. The heads of one
layer are batched by repeating the examples ``heads_per_pass`` times.

:func:`attribution_scores` is the first-order estimate of the same numbers from one forward
and one backward pass: ``S[l, h] ~= sum_t (z - z_ablated) . dM/dz`` (Nanda's attribution
patching), validated against :func:`ablation_scores` in the tests.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import Batch, Example, PromptStyle, tokenize_example
from ..errors import DataError
from ..fileio import atomic_path
from ..models import hook_z_name, model_dims, model_identity

__all__ = [
    "Ablation",
    "HeadScores",
    "ScoreBackend",
    "ScoringData",
    "ablation_scores",
    "attribution_scores",
    "model_fingerprint",
]

_CACHE_VERSION = 1


class Ablation(StrEnum):
    """What replaces a head's ``hook_z`` output."""

    ZERO = "zero"
    MEAN = "mean"
    RESAMPLE = "resample"


class ScoreBackend(StrEnum):
    """Where the ablation hooks go (both give the same scores; tested)."""

    HOOK_POINTS = "hook_points"
    HF_VIEW = "hf_view"


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoringData:
    """Right-padded token rows to score: one row per example, or one per choice of an MC example.

    ``labels`` are -100 on the prompt and on padding. ``example_index[r]`` is the example of row
    ``r``; ``is_gold[r]`` marks the row holding the reference answer (one per example).
    """

    input_ids: Int[Tensor, "rows pos"]
    labels: Int[Tensor, "rows pos"]
    attention_mask: Int[Tensor, "rows pos"]
    example_index: Int[Tensor, " rows"]
    is_gold: Bool[Tensor, " rows"]
    has_choices: Bool[Tensor, " examples"]

    def __post_init__(self) -> None:
        rows, _ = self.input_ids.shape
        if self.labels.shape != self.input_ids.shape or self.attention_mask.shape != self.input_ids.shape:
            raise DataError("ScoringData: input_ids, labels and attention_mask must share one shape")
        if self.example_index.shape != (rows,) or self.is_gold.shape != (rows,):
            raise DataError("ScoringData: example_index and is_gold need one entry per row")
        n = self.n_examples
        if n == 0:
            raise DataError("ScoringData holds no examples")
        gold_per_example = torch.zeros(n, dtype=torch.long).index_add_(
            0, self.example_index, self.is_gold.long()
        )
        if not bool((gold_per_example == 1).all()):
            raise DataError("ScoringData: every example needs exactly one gold row")
        if bool(((self.labels[:, 1:] != -100).sum(1) == 0).any()):
            raise DataError("ScoringData: a row has no answer tokens (labels are all -100)")
        if bool((self.labels[:, 0] != -100).any()):
            raise DataError("ScoringData: position 0 cannot be an answer token (nothing predicts it)")

    @property
    def n_examples(self) -> int:
        return int(self.has_choices.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    def from_examples(
        cls,
        tokenizer: Any,
        examples: Sequence[Example],
        *,
        style: PromptStyle = PromptStyle.ALPACA,
        max_length: int = 400,
    ) -> ScoringData:
        """Tokenize examples as in training; an MC example gives one row per choice."""
        if not examples:
            raise DataError("no examples to score")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise DataError("the tokenizer has neither a pad nor an eos token to pad with")
        rows: list[tuple[list[int], list[int]]] = []
        ex_idx: list[int] = []
        gold: list[bool] = []
        has_choices: list[bool] = []
        for i, ex in enumerate(examples):
            answers = list(ex.choices) if ex.choices else [ex.answer]
            has_choices.append(bool(ex.choices) and len(answers) > 1)
            for ans in answers:
                rows.append(tokenize_example(tokenizer, ex, style=style, max_length=max_length, answer=ans))
                ex_idx.append(i)
                gold.append(ans == ex.answer)
        width = max(len(ids) for ids, _ in rows)
        ids_t = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
        lab_t = torch.full((len(rows), width), -100, dtype=torch.long)
        mask_t = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, labels) in enumerate(rows):
            ids_t[r, : len(ids)] = torch.tensor(ids)
            lab_t[r, : len(ids)] = torch.tensor(labels)
            mask_t[r, : len(ids)] = 1
        return cls(
            ids_t,
            lab_t,
            mask_t,
            torch.tensor(ex_idx, dtype=torch.long),
            torch.tensor(gold, dtype=torch.bool),
            torch.tensor(has_choices, dtype=torch.bool),
        )

    @classmethod
    def from_batch(cls, batch: Batch) -> ScoringData:
        """One row per example from a right-padded :class:`jolalens.data.Batch` (no choices)."""
        mask = batch.attention_mask
        if bool((mask[:, 0] == 0).any()):
            raise DataError("ScoringData.from_batch needs a right-padded batch (collate(padding_side='right'))")
        n = batch.input_ids.shape[0]
        return cls(
            batch.input_ids.long(),
            batch.labels.long(),
            mask.long(),
            torch.arange(n),
            torch.ones(n, dtype=torch.bool),
            torch.zeros(n, dtype=torch.bool),
        )

    def fingerprint(self) -> str:
        """A hash of the token rows, labels and choice structure (the cache key's data part)."""
        h = hashlib.sha256()
        for t in (self.input_ids, self.labels, self.attention_mask, self.example_index, self.is_gold, self.has_choices):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def chunks(self, examples_per_chunk: int) -> Iterator[_Chunk]:
        """Consecutive groups of whole examples (all their choice rows), trimmed of padding."""
        n = self.n_examples
        for start in range(0, n, examples_per_chunk):
            stop = min(n, start + examples_per_chunk)
            rows = ((self.example_index >= start) & (self.example_index < stop)).nonzero().squeeze(-1)
            width = int(self.attention_mask[rows].sum(1).max())
            yield _Chunk(
                input_ids=self.input_ids[rows, :width],
                labels=self.labels[rows, :width],
                attention_mask=self.attention_mask[rows, :width],
                example_index=self.example_index[rows] - start,
                is_gold=self.is_gold[rows],
                has_choices=self.has_choices[start:stop],
                global_rows=rows,
            )


@dataclass(frozen=True)
class _Chunk:
    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor
    example_index: Tensor
    is_gold: Tensor
    has_choices: Tensor
    global_rows: Tensor

    @property
    def n_examples(self) -> int:
        return int(self.has_choices.shape[0])

    @property
    def first_predicting_position(self) -> int:
        """The earliest position whose logits predict an answer token; logits before it are unused."""
        answer = (self.labels != -100).float().argmax(1)
        return int(answer.min()) - 1

    def to(self, device: torch.device) -> _Chunk:
        return _Chunk(*(t.to(device) for t in (
            self.input_ids, self.labels, self.attention_mask, self.example_index, self.is_gold,
            self.has_choices, self.global_rows,
        )))


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
@dataclass
class HeadScores:
    """Per-head drops in the task metric: ``clean - ablated``, averaged over examples.

    ``accuracy_drop`` is ``None`` when no example has choices (and always for attribution,
    whose first-order estimate exists only for the differentiable log-prob).
    """

    logprob_drop: Float[Tensor, "n_layers n_heads"]
    accuracy_drop: Float[Tensor, "n_layers n_heads"] | None
    clean_logprob: float
    clean_accuracy: float | None
    method: str  # "ablation" or "attribution"
    ablation: str
    n_examples: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.logprob_drop.shape)  # type: ignore[return-value]

    def to_frame(self) -> pd.DataFrame:
        """One row per head: layer, head, label, logprob_drop, accuracy_drop, rank (1 = most important)."""
        n_layers, n_heads = self.shape
        layer, head = torch.meshgrid(torch.arange(n_layers), torch.arange(n_heads), indexing="ij")
        frame = pd.DataFrame(
            {
                "layer": layer.flatten().numpy(),
                "head": head.flatten().numpy(),
                "label": [f"L{lay}H{hd}" for lay, hd in zip(layer.flatten().tolist(), head.flatten().tolist(), strict=True)],
                "logprob_drop": self.logprob_drop.flatten().numpy(),
                "accuracy_drop": (
                    self.accuracy_drop.flatten().numpy() if self.accuracy_drop is not None else float("nan")
                ),
            }
        )
        frame["rank"] = frame["logprob_drop"].rank(ascending=False, method="first").astype(int)
        frame["method"] = self.method
        frame["ablation"] = self.ablation
        return frame

    def to_dict(self) -> dict[str, Any]:
        return {
            "logprob_drop": self.logprob_drop.detach().cpu(),
            "accuracy_drop": None if self.accuracy_drop is None else self.accuracy_drop.detach().cpu(),
            "clean_logprob": self.clean_logprob,
            "clean_accuracy": self.clean_accuracy,
            "method": self.method,
            "ablation": self.ablation,
            "n_examples": self.n_examples,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadScores:
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Save to one ``.pt`` file (tensors and plain numbers; loads with ``weights_only=True``)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save({"version": _CACHE_VERSION, **self.to_dict()}, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> HeadScores:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no saved head scores there")
        data = torch.load(path, weights_only=True)
        if data.pop("version", None) != _CACHE_VERSION:
            raise DataError(f"{path}: head scores in another format version; recompute them")
        return cls.from_dict(data)


# ---------------------------------------------------------------------------------------
# Model plumbing: one patch function, two backends
# ---------------------------------------------------------------------------------------
def model_fingerprint(model: nn.Module) -> str:
    """Model identity plus a checksum of every weight, so edited weights change the cache key."""
    h = hashlib.sha256(json.dumps(model_identity(model), sort_keys=True).encode())
    with torch.no_grad():
        sums = [
            torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
            for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0])
        ]
    if sums:
        h.update(torch.stack(sums).cpu().numpy().round(6).tobytes())
    return h.hexdigest()


# A patch maps the layer's z, shaped [rows, pos, n_heads, d_head], to its replacement.
Patch = Callable[[Tensor], Tensor]


class _Runner:
    """Runs the model with per-layer patches on ``hook_z`` (TL) or the ``o_proj`` input (HF view)."""

    def __init__(self, model: nn.Module, backend: ScoreBackend) -> None:
        self.model = model
        self.backend = backend
        self.dims = model_dims(model)
        if backend is ScoreBackend.HF_VIEW:
            from ..hf_view import hf_view, o_proj_modules

            self.view = hf_view(model)
            self.o_proj = o_proj_modules(self.view)
        self.device = next(model.parameters()).device

    def _as_z(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[:2], self.dims.n_heads, self.dims.d_head)

    def logits(
        self, input_ids: Tensor, attention_mask: Tensor, keep_from: int, patches: dict[int, Patch]
    ) -> Float[Tensor, "rows kept vocab"]:
        """Logits at positions ``keep_from..end`` with ``patches[layer]`` applied to that layer's z."""
        n_keep = input_ids.shape[1] - keep_from
        if self.backend is ScoreBackend.HF_VIEW:
            handles = []

            def make(layer: int) -> Callable[..., Any]:
                def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
                    x = args[0]
                    z = patches[layer](self._as_z(x))
                    return (z.reshape(x.shape), *args[1:])

                return pre_hook

            try:
                for layer in patches:
                    handles.append(self.o_proj[layer].register_forward_pre_hook(make(layer)))
                out = self.view(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=n_keep)
            finally:
                for handle in handles:
                    handle.remove()
            return out.logits[:, -n_keep:]

        def make_tl(layer: int) -> Callable[..., Any]:
            def hook(z: Tensor, hook: Any) -> Tensor:
                return patches[layer](z)

            return hook

        # Right padding: pads follow every real token, so causal attention never sees them.
        fwd_hooks = [(hook_z_name(layer), make_tl(layer)) for layer in patches]
        logits = self.model.run_with_hooks(input_ids, fwd_hooks=fwd_hooks)
        return logits[:, keep_from:]


def _row_logprob(
    logits: Float[Tensor, "rows kept vocab"], labels: Int[Tensor, "rows pos"], keep_from: int
) -> Float[Tensor, " rows"]:
    """Mean log-prob of each row's answer tokens; ``logits[:, i]`` is position ``keep_from + i``."""
    targets = labels[:, keep_from + 1 :]
    scored = logits[:, :-1]
    mask = targets != -100
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[mask]
    logp = scored[mask].float().log_softmax(-1).gather(-1, targets[mask][:, None]).squeeze(-1)
    total = torch.zeros(labels.shape[0], dtype=logp.dtype, device=logp.device).index_add_(0, rows, logp)
    return total / mask.sum(1)


def _example_metrics(
    row_lp: Float[Tensor, "*g rows"], chunk: _Chunk
) -> tuple[Float[Tensor, "*g examples"], Float[Tensor, "*g examples"]]:
    """Gold-row log-prob and choice correctness (gold beats every other choice) per example."""
    lead = row_lp.shape[:-1]
    n_ex = chunk.n_examples
    idx = chunk.example_index.expand(*lead, -1)
    gold_lp = torch.zeros(*lead, n_ex, dtype=row_lp.dtype, device=row_lp.device).scatter_add_(
        -1, idx, torch.where(chunk.is_gold, row_lp, torch.zeros_like(row_lp))
    )
    others = torch.where(chunk.is_gold, torch.full_like(row_lp, -math.inf), row_lp)
    best_other = torch.full((*lead, n_ex), -math.inf, dtype=row_lp.dtype, device=row_lp.device).scatter_reduce_(
        -1, idx, others, reduce="amax"
    )
    correct = (gold_lp > best_other).to(row_lp.dtype)
    return gold_lp, correct


def _replace_heads(z: Tensor, heads: Sequence[int], source: Tensor) -> Tensor:
    """``z`` holds ``len(heads)`` stacked copies of a batch; copy ``g`` gets head ``heads[g]`` replaced.

    ``source`` broadcasts to one copy, ``[rows, pos, n_heads, d_head]``.
    """
    n_copies = len(heads)
    rows = z.shape[0] // n_copies
    zg = z.reshape(n_copies, rows, *z.shape[1:])
    mask = torch.zeros(n_copies, 1, 1, z.shape[2], 1, dtype=torch.bool, device=z.device)
    mask[torch.arange(n_copies), 0, 0, torch.tensor(list(heads)), 0] = True
    out = torch.where(mask, source.to(z.dtype).unsqueeze(0), zg)
    return out.reshape(z.shape)


def _capture(
    runner: _Runner, input_ids: Tensor, attention_mask: Tensor, keep_from: int
) -> tuple[Tensor, list[Tensor]]:
    """Clean logits and every layer's z, ``[rows, pos, n_heads, d_head]``, in one forward."""
    zs: dict[int, Tensor] = {}

    def grab(layer: int) -> Patch:
        def patch(z: Tensor) -> Tensor:
            zs[layer] = z.detach()
            return z

        return patch

    patches = {layer: grab(layer) for layer in range(runner.dims.n_layers)}
    logits = runner.logits(input_ids, attention_mask, keep_from, patches)
    return logits, [zs[layer] for layer in range(runner.dims.n_layers)]


@torch.no_grad()
def _head_means(runner: _Runner, data: ScoringData, batch_size: int, progress: bool) -> Tensor:
    """mu[l, h] = mean of z over every non-pad position of the gold rows: ``[L, H, d_head]``."""
    dims = runner.dims
    total = torch.zeros(dims.n_layers, dims.n_heads, dims.d_head, dtype=torch.float64, device=runner.device)
    count = 0
    for chunk in tqdm(list(data.chunks(batch_size)), desc="head means", disable=not progress, leave=False):
        chunk = chunk.to(runner.device)
        _, zs = _capture(runner, chunk.input_ids, chunk.attention_mask, chunk.input_ids.shape[1] - 1)
        weight = (chunk.attention_mask * chunk.is_gold[:, None]).to(torch.float64)
        for layer, z in enumerate(zs):
            total[layer] += torch.einsum("rp,rphd->hd", weight, z.to(torch.float64))
        count += int(weight.sum())
    return (total / count).to(torch.float32)


def _leaf_patches(n_layers: int, leaves: dict[int, Tensor]) -> dict[int, Patch]:
    """Patches that make every layer's z a grad-requiring leaf, stored in ``leaves``."""

    def leaf(layer: int) -> Patch:
        def patch(z: Tensor) -> Tensor:
            leaves[layer] = z.detach().requires_grad_(True)
            return leaves[layer]

        return patch

    return {layer: leaf(layer) for layer in range(n_layers)}


def _derangement(n: int, seed: int) -> Tensor:
    """partner[i] != i for every i: a random cycle through all examples."""
    if n < 2:
        raise DataError("resample ablation needs at least 2 examples to draw other examples' z from")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(-1)
    return partner


@torch.no_grad()
def _donor_z(
    runner: _Runner, data: ScoringData, chunk: _Chunk, partner: Tensor, start: int, mu: Tensor
) -> list[Tensor]:
    """For every row of ``chunk``, the z of its partner example's gold row, padded with ``mu``."""
    gold_row = torch.empty(data.n_examples, dtype=torch.long)
    gold_row[data.example_index[data.is_gold]] = data.is_gold.nonzero().squeeze(-1)
    donors = gold_row[partner[chunk.example_index.cpu() + start]]
    width = chunk.input_ids.shape[1]
    ids = data.input_ids[donors, :width].to(runner.device)
    mask = data.attention_mask[donors, :width].to(runner.device)
    if ids.shape[1] < width:  # the donor rows are narrower than this chunk
        pad = width - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, pad), value=0)
        mask = torch.nn.functional.pad(mask, (0, pad), value=0)
    _, zs = _capture(runner, ids, mask, width - 1)
    valid = mask.bool()[:, :, None, None]
    return [torch.where(valid, z, mu[layer].to(z.dtype)) for layer, z in enumerate(zs)]


def _resolve(
    model: nn.Module,
    data: ScoringData | Sequence[Example],
    reference: ScoringData | Sequence[Example] | None,
    style: PromptStyle,
    max_length: int,
) -> tuple[ScoringData, ScoringData]:
    def prep(d: ScoringData | Sequence[Example]) -> ScoringData:
        if isinstance(d, ScoringData):
            return d
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise DataError("the model has no tokenizer; pass ScoringData built with your tokenizer")
        return ScoringData.from_examples(tokenizer, list(d), style=style, max_length=max_length)

    scored = prep(data)
    return scored, (scored if reference is None else prep(reference))


def _cache_path(cache_dir: str | Path | None, key: dict[str, Any]) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{key['method']}-{key['ablation']}-{digest}.pt"


def _scores_cache_path(
    cache_dir: str | Path | None, method: str, ablation: Ablation, model: nn.Module,
    scored: ScoringData, ref: ScoringData, seed: int,
) -> Path | None:
    """Where scores for these inputs are cached (None without a cache directory)."""
    if cache_dir is None:
        return None
    key = {
        "version": _CACHE_VERSION,
        "method": method,
        "ablation": ablation.value,
        "positions": "all",
        "model": model_fingerprint(model),
        "data": scored.fingerprint(),
        "reference": ref.fingerprint() if ablation is not Ablation.ZERO else None,
        "seed": seed if ablation is Ablation.RESAMPLE else None,
    }
    return _cache_path(cache_dir, key)


def _parse(ablation: Ablation | str, backend: ScoreBackend | str, batch_size: int) -> tuple[Ablation, ScoreBackend]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    try:
        abl = Ablation(ablation)
    except ValueError:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {[a.value for a in Ablation]}") from None
    try:
        back = ScoreBackend(backend)
    except ValueError:
        raise ValueError(f"unknown backend {backend!r}; choose one of {[b.value for b in ScoreBackend]}") from None
    return abl, back


# ---------------------------------------------------------------------------------------
# Public scorers
# ---------------------------------------------------------------------------------------
def ablation_scores(
    model: nn.Module,
    data: ScoringData | Sequence[Example],
    *,
    ablation: Ablation | str = Ablation.MEAN,
    backend: ScoreBackend | str = ScoreBackend.HF_VIEW,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    reference: ScoringData | Sequence[Example] | None = None,
    seed: int = 0,
    style: PromptStyle = PromptStyle.ALPACA,
    max_length: int = 400,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> HeadScores:
    """Drop in answer log-prob (and accuracy, where choices exist) when each head is ablated.

    ``batch_size`` examples are scored at once; ``heads_per_pass`` heads of a layer (default:
    all of them) share one forward by repeating the batch, so a pass holds
    ``batch_size * heads_per_pass`` sequences (times the choices per example). ``reference``
    gives the examples the mean is taken over (default: ``data``). With ``cache_dir``, results
    are stored under a key of model weights, data, ablation and seed, and reused.
    """
    ablation, backend = _parse(ablation, backend, batch_size)
    dims = model_dims(model)
    group = dims.n_heads if heads_per_pass is None else int(heads_per_pass)
    if group < 1:
        raise ValueError(f"heads_per_pass must be >= 1, got {heads_per_pass}")
    group = min(group, dims.n_heads)
    scored, ref = _resolve(model, data, reference, style, max_length)
    path = _scores_cache_path(cache_dir, "ablation", ablation, model, scored, ref, seed)
    if path is not None and path.is_file():
        return HeadScores.load(path)

    runner = _Runner(model, backend)
    with torch.no_grad():
        mu = _head_means(runner, ref, batch_size, progress) if ablation is not Ablation.ZERO else None
    partner = _derangement(scored.n_examples, seed) if ablation is Ablation.RESAMPLE else None

    n_layers, n_heads = dims.n_layers, dims.n_heads
    head_groups = [list(range(s, min(n_heads, s + group))) for s in range(0, n_heads, group)]
    chunks = list(scored.chunks(batch_size))
    bar = tqdm(total=len(chunks) * n_layers * len(head_groups), desc=f"{ablation.value} ablation",
               disable=not progress)
    clean_lp = clean_acc = 0.0
    abl_lp = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    abl_acc = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    start = 0
    with torch.no_grad(), bar:
        for chunk in chunks:
            chunk = chunk.to(runner.device)
            keep = chunk.first_predicting_position
            logits = runner.logits(chunk.input_ids, chunk.attention_mask, keep, {})
            gold, correct = _example_metrics(_row_logprob(logits, chunk.labels, keep), chunk)
            clean_lp += float(gold.sum())
            clean_acc += float(correct[chunk.has_choices].sum())
            if ablation is Ablation.RESAMPLE:
                assert mu is not None and partner is not None
                donors = _donor_z(runner, scored, chunk, partner, start, mu)
            for layer in range(n_layers):
                if ablation is Ablation.ZERO:
                    source = torch.zeros(1, 1, n_heads, dims.d_head, device=runner.device)
                elif ablation is Ablation.MEAN:
                    assert mu is not None
                    source = mu[layer][None, None]
                else:
                    source = donors[layer]
                for heads in head_groups:
                    reps = len(heads)
                    ids = chunk.input_ids.repeat(reps, 1)
                    mask = chunk.attention_mask.repeat(reps, 1)
                    labels = chunk.labels.repeat(reps, 1)

                    def patch(z: Tensor, heads: list[int] = heads, source: Tensor = source) -> Tensor:
                        return _replace_heads(z, heads, source)

                    out = runner.logits(ids, mask, keep, {layer: patch})
                    row_lp = _row_logprob(out, labels, keep).reshape(reps, -1)
                    g_lp, g_correct = _example_metrics(row_lp, chunk)
                    abl_lp[layer, heads] += g_lp.sum(-1).double().cpu()
                    abl_acc[layer, heads] += g_correct[:, chunk.has_choices].sum(-1).double().cpu()
                    bar.update(1)
            start += chunk.n_examples

    n = scored.n_examples
    n_mc = int(scored.has_choices.sum())
    result = HeadScores(
        logprob_drop=((clean_lp - abl_lp) / n).float(),
        accuracy_drop=((clean_acc - abl_acc) / n_mc).float() if n_mc else None,
        clean_logprob=clean_lp / n,
        clean_accuracy=clean_acc / n_mc if n_mc else None,
        method="ablation",
        ablation=ablation.value,
        n_examples=n,
    )
    if path is not None:
        result.save(path)
    return result


def attribution_scores(
    model: nn.Module,
    data: ScoringData | Sequence[Example],
    *,
    ablation: Ablation | str = Ablation.MEAN,
    backend: ScoreBackend | str = ScoreBackend.HF_VIEW,
    batch_size: int = 8,
    reference: ScoringData | Sequence[Example] | None = None,
    seed: int = 0,
    style: PromptStyle = PromptStyle.ALPACA,
    max_length: int = 400,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> HeadScores:
    """First-order estimate of :func:`ablation_scores`' log-prob drop, for all heads at once.

    ``S[l, h] = E_x sum_t (z - z_ablated)[l, h, t] . dM/dz[l, h, t]`` with the gradient taken on
    the clean run: one forward and one backward per batch (plus one forward per batch for the
    head means, and for resample the donors' z). ``accuracy_drop`` is ``None``.
    """
    ablation, backend = _parse(ablation, backend, batch_size)
    dims = model_dims(model)
    scored, ref = _resolve(model, data, reference, style, max_length)
    path = _scores_cache_path(cache_dir, "attribution", ablation, model, scored, ref, seed)
    if path is not None and path.is_file():
        return HeadScores.load(path)

    runner = _Runner(model, backend)
    with torch.no_grad():
        mu = _head_means(runner, ref, batch_size, progress) if ablation is not Ablation.ZERO else None
    partner = _derangement(scored.n_examples, seed) if ablation is Ablation.RESAMPLE else None
    estimate = torch.zeros(dims.n_layers, dims.n_heads, dtype=torch.float64)
    clean_lp = 0.0
    start = 0
    for chunk in tqdm(list(scored.chunks(batch_size)), desc=f"{ablation.value} attribution", disable=not progress):
        chunk = chunk.to(runner.device)
        keep = chunk.first_predicting_position
        leaves: dict[int, Tensor] = {}
        with torch.enable_grad():
            logits = runner.logits(chunk.input_ids, chunk.attention_mask, keep, _leaf_patches(dims.n_layers, leaves))
            gold, _ = _example_metrics(_row_logprob(logits, chunk.labels, keep), chunk)
            layers = list(range(dims.n_layers))
            grads = torch.autograd.grad(gold.sum(), [leaves[layer] for layer in layers])
        clean_lp += float(gold.detach().sum())
        donors = _donor_z(runner, scored, chunk, partner, start, mu) if partner is not None else None
        for layer, grad in zip(layers, grads, strict=True):
            clean_z = leaves[layer].detach()
            if ablation is Ablation.ZERO:
                delta = clean_z
            elif ablation is Ablation.MEAN:
                assert mu is not None
                delta = clean_z - mu[layer].to(clean_z.dtype)
            else:
                assert donors is not None
                delta = clean_z - donors[layer]
            # Only gold rows carry gradient; sum over rows, positions and d_head.
            estimate[layer] += torch.einsum("rphd,rphd->h", delta.double(), grad.double()).cpu()
        start += chunk.n_examples

    n = scored.n_examples
    result = HeadScores(
        logprob_drop=(estimate / n).float(),
        accuracy_drop=None,
        clean_logprob=clean_lp / n,
        clean_accuracy=None,
        method="attribution",
        ablation=ablation.value,
        n_examples=n,
    )
    if path is not None:
        result.save(path)
    return result

