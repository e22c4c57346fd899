"""Running the frozen model with a patch on chosen heads' ``hook_z``, on either backend.

One patch function per layer maps ``z`` ``[rows, pos, n_heads, d_head]`` to its replacement;
:class:`HeadPatchRunner` applies it at the layer's ``hook_z`` site (:mod:`jolalens.sites`):
``blocks.{l}.attn.hook_z`` (TransformerLens) or the input of ``o_proj`` in
:func:`jolalens.hf_view.hf_view` (the same tensor flattened over heads), as edits do. On the HF
view a forward can also resume at a layer from the residual stream a clean forward recorded
(:mod:`.layer_suffix`). Also here: the per-row answer metrics and the mean/resample sources the
ablations patch in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..edit import Backend
from ..errors import DataError
from ..models import model_dims
from ..sites import Site, SiteKind, hf_hook, tl_hook
from .layer_suffix import LayerSuffix
from .scoring_data import ScoringChunk, ScoringData

__all__ = [
    "HeadPatchRunner",
    "Patch",
    "capture_z",
    "derangement",
    "donor_z",
    "example_metrics",
    "head_means",
    "leaf_patches",
    "replace_heads",
    "row_logprob",
]


# A patch maps the layer's z, shaped [rows, pos, n_heads, d_head], to its replacement.
Patch = Callable[[Tensor], Tensor]


class HeadPatchRunner:
    """Runs the model with per-layer patches on the ``hook_z`` site of either backend."""

    def __init__(self, model: nn.Module, backend: Backend) -> None:
        self.model: Any = model  # a TransformerLens model (run_with_hooks)
        self.backend = backend
        self.dims = model_dims(model)
        self.suffix: LayerSuffix | None = None  # resuming at a layer: HF view only
        if backend is Backend.HF_VIEW:
            from ..hf_view import hf_view

            self.view = hf_view(model)
            self.suffix = LayerSuffix(self.view)
        self.device = next(model.parameters()).device

    def logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        keep_from: int,
        patches: dict[int, Patch],
        *,
        start: tuple[int, Tensor] | None = None,
    ) -> Float[Tensor, "rows kept vocab"]:
        """Logits at positions ``keep_from..end``, ``patches[layer]`` applied to that layer's z.

        ``start=(layer, hidden)`` (HF view only) runs layers ``layer..L-1`` alone, from
        ``hidden``, the residual stream entering ``layer`` that :meth:`recording` kept for
        these rows; patches below ``layer`` then have no effect.
        """
        n_keep = input_ids.shape[1] - keep_from
        if self.backend is Backend.HF_VIEW:
            return self._hf_logits(input_ids, attention_mask, n_keep, patches, start)[:, -n_keep:]
        if start is not None:
            raise ValueError("resuming at a layer needs the hf_view backend")
        # Right padding: pads follow every real token, so causal attention never sees them.
        fwd_hooks = [tl_hook(Site(SiteKind.HOOK_Z, layer), patch) for layer, patch in patches.items()]
        logits = self.model.run_with_hooks(input_ids, fwd_hooks=fwd_hooks)
        return logits[:, keep_from:]

    def row_logprobs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        keep_from: int,
        patches: dict[int, Patch],
        *,
        start: tuple[int, Tensor] | None = None,
        answer_only: bool = False,
    ) -> Float[Tensor, " rows"]:
        """Mean log-prob of each row's answer tokens (:func:`row_logprob` of :meth:`logits`).

        ``answer_only`` (HF view with an output-embedding module): the unembedding runs only at
        the positions that predict an answer token, not at every kept position: a pre-hook on
        ``lm_head`` gathers those hidden states into one sequence ``[1, n_answer_tokens,
        d_model]`` (whatever the model applies after ``lm_head``, e.g. Gemma's logit
        soft-capping, is per logit). The same numbers, up to float rounding.
        """
        unembed = None
        if self.backend is Backend.HF_VIEW:
            output_embeddings = getattr(self.view, "get_output_embeddings", None)
            unembed = output_embeddings() if callable(output_embeddings) else None
        if not answer_only or not isinstance(unembed, nn.Module):
            return row_logprob(
                self.logits(input_ids, attention_mask, keep_from, patches, start=start), labels, keep_from
            )
        targets = labels[:, keep_from + 1 :]
        mask = targets != -100
        rows, pos = mask.nonzero(as_tuple=True)

        def gather(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0][rows, pos][None], *args[1:])

        handle = unembed.register_forward_pre_hook(gather)
        try:
            n_keep = input_ids.shape[1] - keep_from
            logits = self._hf_logits(input_ids, attention_mask, n_keep, patches, start)[0]
        finally:
            handle.remove()
        logp = logits.float().log_softmax(-1).gather(-1, targets[mask][:, None]).squeeze(-1)
        return _per_row_mean(logp, rows, mask)

    @contextmanager
    def recording(self, active: bool = True) -> Iterator[list[Tensor]]:
        """Within the block, a forward fills the list with the residual stream entering each layer.

        Those are the ``hidden`` of :meth:`logits`' ``start`` (HF view only). With ``active``
        false the list stays empty.
        """
        if not active:
            yield []
            return
        if self.suffix is None:
            raise ValueError("recording the residual stream needs the hf_view backend")
        with self.suffix.recording() as residuals:
            yield residuals

    def _hf_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        n_keep: int,
        patches: dict[int, Patch],
        start: tuple[int, Tensor] | None,
    ) -> Tensor:
        with ExitStack() as stack:
            for layer, patch in patches.items():
                stack.callback(hf_hook(Site(SiteKind.HOOK_Z, layer), patch, self.view).register().remove)
            if start is not None:
                assert self.suffix is not None
                stack.enter_context(self.suffix.starting_at(*start))
            out = self.view(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=n_keep)
        return out.logits


def row_logprob(
    logits: Float[Tensor, "rows kept vocab"], labels: Int[Tensor, "rows pos"], keep_from: int
) -> Float[Tensor, " rows"]:
    """Mean log-prob of each row's answer tokens; ``logits[:, i]`` is position ``keep_from + i``."""
    targets = labels[:, keep_from + 1 :]
    scored = logits[:, :-1]
    mask = targets != -100
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[mask]
    logp = scored[mask].float().log_softmax(-1).gather(-1, targets[mask][:, None]).squeeze(-1)
    return _per_row_mean(logp, rows, mask)


def _per_row_mean(logp: Tensor, rows: Tensor, mask: Tensor) -> Tensor:
    """Mean of the answer-token log-probs ``logp`` (row ``rows[i]`` each) per row of ``mask``."""
    total = torch.zeros(mask.shape[0], dtype=logp.dtype, device=logp.device).index_add_(0, rows, logp)
    return total / mask.sum(1)


def example_metrics(
    row_lp: Float[Tensor, "*g rows"], chunk: ScoringChunk
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


def replace_heads(z: Tensor, heads: Sequence[int], source: Tensor) -> Tensor:
    """Of the ``len(heads)`` stacked copies of a batch in ``z``, copy ``g`` swaps ``heads[g]``.

    ``source`` broadcasts to one copy, ``[rows, pos, n_heads, d_head]``.
    """
    n_copies = len(heads)
    rows = z.shape[0] // n_copies
    zg = z.reshape(n_copies, rows, *z.shape[1:])
    mask = torch.zeros(n_copies, 1, 1, z.shape[2], 1, dtype=torch.bool, device=z.device)
    mask[torch.arange(n_copies), 0, 0, torch.tensor(list(heads)), 0] = True
    out = torch.where(mask, source.to(z.dtype).unsqueeze(0), zg)
    return out.reshape(z.shape)


def capture_z(
    runner: HeadPatchRunner, input_ids: Tensor, attention_mask: Tensor, keep_from: int
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
def head_means(runner: HeadPatchRunner, data: ScoringData, batch_size: int, progress: bool) -> Tensor:
    """mu[l, h] = mean of z over every non-pad position of the gold rows: ``[L, H, d_head]``.

    Only the gold rows are run (the other choices' z would not be averaged).
    """
    dims = runner.dims
    total = torch.zeros(dims.n_layers, dims.n_heads, dims.d_head, dtype=torch.float64, device=runner.device)
    count = 0
    gold, _ = data.gold_only().by_length()  # batches of like length pad little
    for chunk in tqdm(list(gold.chunks(batch_size)), desc="head means", disable=not progress, leave=False):
        chunk = chunk.to(runner.device)
        _, zs = capture_z(runner, chunk.input_ids, chunk.attention_mask, chunk.input_ids.shape[1] - 1)
        weight = (chunk.attention_mask * chunk.is_gold[:, None]).to(torch.float64)
        for layer, z in enumerate(zs):
            total[layer] += torch.einsum("rp,rphd->hd", weight, z.to(torch.float64))
        count += int(weight.sum())
    return (total / count).to(torch.float32)


def leaf_patches(n_layers: int, leaves: dict[int, Tensor]) -> dict[int, Patch]:
    """Patches that make every layer's z a grad-requiring leaf, stored in ``leaves``."""

    def leaf(layer: int) -> Patch:
        def patch(z: Tensor) -> Tensor:
            leaves[layer] = z.detach().requires_grad_(True)
            return leaves[layer]

        return patch

    return {layer: leaf(layer) for layer in range(n_layers)}


def derangement(n: int, seed: int) -> Tensor:
    """partner[i] != i for every i: a random cycle through all examples."""
    if n < 2:
        raise DataError("resample ablation needs at least 2 examples to draw other examples' z from")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(-1)
    return partner


@torch.no_grad()
def donor_z(
    runner: HeadPatchRunner,
    data: ScoringData,
    chunk: ScoringChunk,
    partner: Tensor,
    start: int,
    mu: Tensor,
) -> list[Tensor]:
    """For every row of ``chunk``, the z of its partner example's gold row, padded with ``mu``.

    ``data`` holds the donors (row ``start`` of it is the chunk's first example). Each partner's
    row is run once, then copied to every choice row of the chunk's example.
    """
    donors = data.gold_rows()[partner[start : start + chunk.n_examples]]
    width = chunk.input_ids.shape[1]
    ids = data.input_ids[donors, :width].to(runner.device)
    mask = data.attention_mask[donors, :width].to(runner.device)
    if ids.shape[1] < width:  # the donor rows are narrower than this chunk
        pad = width - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, pad), value=0)
        mask = torch.nn.functional.pad(mask, (0, pad), value=0)
    _, zs = capture_z(runner, ids, mask, width - 1)
    valid = mask.bool()[:, :, None, None]
    per_row = chunk.example_index
    return [torch.where(valid, z, mu[layer].to(z.dtype))[per_row] for layer, z in enumerate(zs)]
