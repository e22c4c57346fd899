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

Two equivalent backends (:class:`jolalens.edit.Backend`) run it: ``"hook_points"`` patches
``blocks.{l}.attn.hook_z`` of the TransformerLens model; ``"hf_view"`` (default, faster) patches
the input of ``o_proj`` in :func:`jolalens.hf_view.hf_view`, which is ``hook_z`` flattened over
heads (:mod:`.head_patching`). The heads of one layer are batched by repeating the examples
``heads_per_pass`` times. The data is :mod:`.scoring_data`, the results :mod:`.head_scores`.

Two exact shortcuts cut the work: with ``accuracy=False`` only the gold rows run (the log-prob
metric needs no other choice), and on the HF view a head of layer ``l`` runs layers ``l..L-1``
only, resuming from the clean residual stream entering ``l`` (:mod:`.layer_suffix`).

:func:`attribution_scores` is the first-order estimate of the same numbers from one forward
and one backward pass: ``S[l, h] ~= sum_t (z - z_ablated) . dM/dz`` (Nanda's attribution
patching), validated against :func:`ablation_scores` in the tests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import Example, PromptStyle
from ..edit import Backend
from ..models import model_dims
from ..runners import resolve_backend
from .head_patching import (
    HeadPatchRunner,
    derangement,
    donor_z,
    example_metrics,
    head_means,
    leaf_patches,
    replace_heads,
    row_logprob,
)
from .head_scores import HeadScores, model_fingerprint, scores_cache_path
from .scoring_data import ScoringChunk, ScoringData, resolve_scoring_data

__all__ = [
    "Ablation",
    "HeadScores",
    "ScoreBackend",
    "ScoringData",
    "ablation_scores",
    "attribution_scores",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)

ScoreBackend = Backend  # the former duplicate enum; same values ("hook_points", "hf_view")


class Ablation(StrEnum):
    """What replaces a head's ``hook_z`` output."""

    ZERO = "zero"
    MEAN = "mean"
    RESAMPLE = "resample"


def _parse(ablation: Ablation | str, backend: Backend | str, batch_size: int) -> tuple[Ablation, Backend]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    try:
        abl = Ablation(ablation)
    except ValueError:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {[a.value for a in Ablation]}") from None
    try:
        back = Backend(backend)
    except ValueError:
        raise ValueError(f"unknown backend {backend!r}; choose one of {[b.value for b in Backend]}") from None
    return abl, back


def ablation_scores(
    model: nn.Module,
    data: ScoringData | Sequence[Example],
    *,
    ablation: Ablation | str = Ablation.MEAN,
    backend: Backend | str | None = None,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    reference: ScoringData | Sequence[Example] | None = None,
    seed: int = 0,
    style: PromptStyle = PromptStyle.ALPACA,
    max_length: int = 400,
    accuracy: bool = True,
    full_forward: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> HeadScores:
    """Drop in answer log-prob (and accuracy, where choices exist) when each head is ablated.

    ``batch_size`` examples are scored at once; ``heads_per_pass`` heads of a layer (default:
    all of them) share one forward by repeating the batch, so a pass holds
    ``batch_size * heads_per_pass`` sequences (times the choices per example). ``reference``
    gives the examples the mean is taken over (default: ``data``). With ``cache_dir``, results
    are stored under a key of model weights, data, ablation and seed, and reused.

    ``accuracy=False`` scores only each example's gold row (the log-prob metric needs no other
    choice): ``n_choices`` times fewer rows on multiple-choice data, the same log-prob numbers;
    ``accuracy_drop`` and ``clean_accuracy`` are then ``None``.

    Exact shortcuts, on by default (same numbers up to float rounding, since each example's
    rows are scored on their own: right padding, causal attention):

    * examples are batched in order of length, so a batch pads little;
    * the HF view backend unembeds only the positions that predict an answer token;
    * the HF view backend runs the layers below the ablated one once per batch, on the clean
      forward, which records the residual stream entering every layer (``L x rows x pos x
      d_model`` floats held per batch); a head of layer ``l`` then runs layers ``l..L-1`` only
      (:mod:`.layer_suffix`), about half of all layers on average.

    The last two are checked once, on the first batch, against a plain forward's clean
    log-probs; one that does not reproduce them (an architecture it does not fit) is dropped
    with a warning. ``full_forward=True`` drops both (every pass runs all layers and unembeds
    every kept position: the reference the tests compare against); the ``hook_points``
    backend never takes them.
    """
    if backend is None or backend == "auto":  # the HF view where it exists, else hook points
        backend = resolve_backend(model)
    ablation, backend = _parse(ablation, backend, batch_size)
    dims = model_dims(model)
    group = dims.n_heads if heads_per_pass is None else int(heads_per_pass)
    if group < 1:
        raise ValueError(f"heads_per_pass must be >= 1, got {heads_per_pass}")
    group = min(group, dims.n_heads)
    scored, ref = resolve_scoring_data(model, data, reference, style, max_length)
    path, cached = _cache_lookup(cache_dir, ablation, model, scored, ref, seed, accuracy)
    if cached is not None:
        return cached
    if not accuracy:  # the log-prob metric reads the gold rows alone
        scored = scored.gold_only()
    partner = derangement(scored.n_examples, seed) if ablation is Ablation.RESAMPLE else None
    scored, order = scored.by_length()
    if partner is not None:  # the same pairs of examples, renumbered
        renumber = torch.empty_like(order)
        renumber[order] = torch.arange(len(order))
        partner = renumber[partner[order]]

    runner = HeadPatchRunner(model, backend)
    with torch.no_grad():
        mu = head_means(runner, ref, batch_size, progress) if ablation is not Ablation.ZERO else None
    shortcuts: _Shortcuts | None = _Shortcuts(False, False) if full_forward else None

    n_layers, n_heads = dims.n_layers, dims.n_heads
    head_groups = [list(range(s, min(n_heads, s + group))) for s in range(0, n_heads, group)]
    chunks = list(scored.chunks(batch_size))
    bar = tqdm(
        total=len(chunks) * n_layers * len(head_groups),
        desc=f"{ablation.value} ablation",
        disable=not progress,
    )
    clean_lp = clean_acc = 0.0
    abl_lp = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    abl_acc = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    offset = 0
    with torch.no_grad(), bar:
        for chunk in chunks:
            chunk = chunk.to(runner.device)
            keep = chunk.first_predicting_position
            if shortcuts is None:  # the first batch decides
                shortcuts = _check_shortcuts(runner, chunk, keep)
            with runner.recording(active=shortcuts.resume) as residuals:
                row_lp = runner.row_logprobs(
                    chunk.input_ids, chunk.attention_mask, chunk.labels, keep, {}, answer_only=shortcuts.answer_only
                )
            gold, correct = example_metrics(row_lp, chunk)
            clean_lp += float(gold.sum())
            clean_acc += float(correct[chunk.has_choices].sum())
            if ablation is Ablation.RESAMPLE:
                assert mu is not None and partner is not None
                donors = donor_z(runner, scored, chunk, partner, offset, mu)
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
                    start = (layer, residuals[layer].repeat(reps, 1, 1)) if residuals else None

                    def patch(z: Tensor, heads: list[int] = heads, source: Tensor = source) -> Tensor:
                        return replace_heads(z, heads, source)

                    row_lp = runner.row_logprobs(
                        ids, mask, labels, keep, {layer: patch}, start=start, answer_only=shortcuts.answer_only
                    ).reshape(reps, -1)
                    g_lp, g_correct = example_metrics(row_lp, chunk)
                    abl_lp[layer, heads] += g_lp.sum(-1).double().cpu()
                    abl_acc[layer, heads] += g_correct[:, chunk.has_choices].sum(-1).double().cpu()
                    bar.update(1)
            offset += chunk.n_examples

    n = scored.n_examples
    n_mc = int(scored.has_choices.sum())  # 0 after gold_only(): no accuracy
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


@dataclass(frozen=True)
class _Shortcuts:
    """Which exact shortcuts the passes take (see :func:`ablation_scores`)."""

    answer_only: bool  # unembed only the positions that predict an answer token
    resume: bool  # run layers l..L-1 only, from the recorded residual stream


def _check_shortcuts(runner: HeadPatchRunner, chunk: ScoringChunk, keep: int) -> _Shortcuts:
    """Keep each shortcut that reproduces a plain forward's clean log-probs on ``chunk``."""
    if runner.backend is not Backend.HF_VIEW:
        return _Shortcuts(False, False)

    def clean(**kwargs: Any) -> Tensor:
        return runner.row_logprobs(chunk.input_ids, chunk.attention_mask, chunk.labels, keep, {}, **kwargs)

    reference = clean()
    with runner.recording() as residuals:
        gathered = clean(answer_only=True)
    answer_only = _agrees(reference, gathered, "unembedding the answer positions alone")
    mid = runner.dims.n_layers // 2
    resumed = clean(start=(mid, residuals[mid]), answer_only=answer_only)
    return _Shortcuts(answer_only, _agrees(reference, resumed, f"resuming at layer {mid}"))


def _agrees(reference: Tensor, shortcut: Tensor, what: str) -> bool:
    """Whether a shortcut's clean row log-probs match the plain forward's (float rounding)."""
    tol = 2e-5 if reference.dtype == torch.float32 else 5e-2
    err = float((reference - shortcut).abs().max())
    if err > tol * (1.0 + float(reference.abs().max())):
        logger.warning("%s changes the clean log-probs by %.3g: not taking that shortcut", what, err)
        return False
    return True


def _cache_lookup(
    cache_dir: str | Path | None,
    ablation: Ablation,
    model: nn.Module,
    scored: ScoringData,
    ref: ScoringData,
    seed: int,
    accuracy: bool,
) -> tuple[Path | None, HeadScores | None]:
    """Where these scores are saved, and the scores if cached (full ones serve ``accuracy=False``)."""
    if cache_dir is None:
        return None, None
    full = scores_cache_path(cache_dir, "ablation", ablation.value, model, scored, ref, seed)
    own = (
        full
        if accuracy
        else scores_cache_path(cache_dir, "ablation", ablation.value, model, scored, ref, seed, logprob_only=True)
    )
    assert full is not None and own is not None
    for candidate in dict.fromkeys([own, full]):
        if candidate.is_file():
            logger.debug("head scores from the cache: %s", candidate)
            scores = HeadScores.load(candidate)
            if not accuracy:
                scores = replace(scores, accuracy_drop=None, clean_accuracy=None)
            return own, scores
    return own, None


def attribution_scores(
    model: nn.Module,
    data: ScoringData | Sequence[Example],
    *,
    ablation: Ablation | str = Ablation.MEAN,
    backend: Backend | str | None = None,
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
    if backend is None or backend == "auto":  # the HF view where it exists, else hook points
        backend = resolve_backend(model)
    ablation, backend = _parse(ablation, backend, batch_size)
    dims = model_dims(model)
    scored, ref = resolve_scoring_data(model, data, reference, style, max_length)
    path = scores_cache_path(cache_dir, "attribution", ablation.value, model, scored, ref, seed)
    if path is not None and path.is_file():
        logger.debug("head scores from the cache: %s", path)
        return HeadScores.load(path)

    runner = HeadPatchRunner(model, backend)
    with torch.no_grad():
        mu = head_means(runner, ref, batch_size, progress) if ablation is not Ablation.ZERO else None
    partner = derangement(scored.n_examples, seed) if ablation is Ablation.RESAMPLE else None
    estimate = torch.zeros(dims.n_layers, dims.n_heads, dtype=torch.float64)
    clean_lp = 0.0
    start = 0
    for chunk in tqdm(list(scored.chunks(batch_size)), desc=f"{ablation.value} attribution", disable=not progress):
        chunk = chunk.to(runner.device)
        keep = chunk.first_predicting_position
        leaves: dict[int, Tensor] = {}
        with torch.enable_grad():
            logits = runner.logits(chunk.input_ids, chunk.attention_mask, keep, leaf_patches(dims.n_layers, leaves))
            gold, _ = example_metrics(row_logprob(logits, chunk.labels, keep), chunk)
            layers = list(range(dims.n_layers))
            grads = torch.autograd.grad(gold.sum(), [leaves[layer] for layer in layers])
        clean_lp += float(gold.detach().sum())
        donors = None
        if partner is not None:
            assert mu is not None  # resample ablation takes the mean for positions past a donor's end
            donors = donor_z(runner, scored, chunk, partner, start, mu)
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
