"""ITI, Inference-Time Intervention (Li et al., NeurIPS 2023), fitted rather than trained.

1. Features: each head's ``hook_z`` at the last token of "prompt + option", for the correct
   option (label 1) and one seeded wrong option (label 0) of every training question.
2. Localisation: per head, an L2-regularised logistic probe (sklearn's objective, C=1, solved
   by Newton's method for all heads at once) fitted on 80% of the questions; the score is its
   accuracy on the other 20%; the top-K heads are edited.
3. Edit: ``z <- z + alpha * sigma * theta_hat`` on the selected heads, with ``theta_hat`` the
   normalised mass-mean difference (correct minus wrong) and ``sigma`` the std of the
   activations' projection on it, both over all training activations.

Positions: the ones that predict answer tokens, declared by jolalens' trainer and scorers via
:func:`jolalens.edit.answer_positions` (the last prompt token, then each answer token: the
legacy ITI multiple-choice rule). Outside such a block (``generate``) the last position of each
forward call is edited: the last prompt token (prompts are left-padded), then each new token.
Unlike the released intervener, which edits batch item 0 only, every row is edited.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import Example, PromptStyle, collate, padding_id
from ..edit import current_answer_positions, register_method
from ..errors import JolaError
from ..hf_view import hf_view
from ..models import ModelDims, hook_z_name, model_dims
from ..sites import Site, SiteFn, SiteKind, hf_hook, tl_hook
from ._common import BaselineEdit, contrast_rows

__all__ = ["ItiConfig", "ItiEdit", "fit_iti", "probe_accuracies"]


@dataclass(frozen=True)
class ItiConfig:
    """How many heads to edit (``k``), how hard (``alpha``), and the probe's settings."""

    k: int = 48
    alpha: float = 15.0
    probe_val_fraction: float = 0.2
    l2_c: float = 1.0
    seed: int = 42

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 0 or not 0 < self.probe_val_fraction < 1 or self.l2_c <= 0:
            raise ValueError("ITI needs k >= 1, alpha >= 0, 0 < probe_val_fraction < 1 and l2_c > 0")

    def n_parameters(self, dims: ModelDims) -> int:
        """Numbers stored for the edit (none trained by gradient): K directions and K scales."""
        k = min(self.k, dims.n_layers * dims.n_heads)
        return k * dims.d_head + k


@register_method
class ItiEdit(BaselineEdit):
    """Fitted per-head directions, scales and probe scores; the top-``k`` heads are shifted."""

    method = "iti"
    config_cls = ItiConfig

    def __init__(self, dims: ModelDims, config: ItiConfig | None = None) -> None:
        config = config or ItiConfig()
        super().__init__(dims, config)
        n_layers, h, d = dims.n_layers, dims.n_heads, dims.d_head
        self.register_buffer("direction", torch.zeros(n_layers, h, d))
        self.register_buffer("sigma", torch.zeros(n_layers, h))
        self.register_buffer("probe_accuracy", torch.zeros(n_layers, h))

    # ---- what gets edited ----------------------------------------------------------------
    def selected(self) -> Tensor:
        """``[layer, head]`` bool: the top-``k`` heads by probe accuracy (ties by index)."""
        flat = self.probe_accuracy.flatten()
        k = min(self.config.k, flat.numel())
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[torch.topk(flat, k, sorted=True).indices] = True
        return mask.view_as(self.probe_accuracy)

    def shift(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """``alpha * sigma * theta_hat`` on the selected heads, 0 elsewhere."""
        scale = self.config.alpha * self.sigma * self.selected()
        return scale[..., None] * self.direction

    def with_strength(self, *, k: int | None = None, alpha: float | None = None) -> ItiEdit:
        """The same fitted probes and directions with another ``k`` or ``alpha`` (no refit)."""
        config = replace(
            self.config, k=self.config.k if k is None else k, alpha=self.config.alpha if alpha is None else alpha
        )
        other = type(self)(self.dims, config)
        other.model_identity = self.model_identity
        other.load_state_dict(self.state_dict())
        return other.to(self.direction.device).eval()

    def apply(self, z: Float[Tensor, "batch pos head_index d_head"], shift: Tensor) -> Tensor:
        mask = current_answer_positions()
        if mask is None:
            mask = torch.zeros(z.shape[:2], dtype=torch.bool, device=z.device)
            mask[:, -1] = True
        elif tuple(mask.shape) != tuple(z.shape[:2]):
            raise JolaError(
                f"answer_positions mask {tuple(mask.shape)} does not match this forward pass "
                f"[batch, pos] = {tuple(z.shape[:2])}"
            )
        mask = mask.to(z.device)
        return (z + mask.float()[..., None, None] * shift.float().to(z.device)).to(z.dtype)

    # ---- hooks ----------------------------------------------------------------------------
    def _edited_layers(self) -> list[int]:
        return self.selected().any(dim=1).nonzero().flatten().tolist()

    def site_edits(self) -> list[tuple[Site, SiteFn]]:
        """:meth:`apply` at ``hook_z`` of every layer with a selected head (shift fixed at attach)."""
        shift = self.shift()

        def at(layer: int) -> SiteFn:
            return lambda z: self.apply(z, shift[layer])

        return [(Site(SiteKind.HOOK_Z, layer), at(layer)) for layer in self._edited_layers()]

    def n_stored(self) -> int:
        return self.config.n_parameters(self.dims)

    def _saved(self) -> dict[str, Tensor]:
        out = {}
        for layer in range(self.dims.n_layers):
            site = hook_z_name(layer)
            out[f"{site}.direction"] = self.direction[layer]
            out[f"{site}.sigma"] = self.sigma[layer]
            out[f"{site}.probe_accuracy"] = self.probe_accuracy[layer]
        return out

    def extra_repr(self) -> str:
        top = self.probe_accuracy.max().item() if self.probe_accuracy.numel() else float("nan")
        return (
            f"k={self.config.k}, alpha={self.config.alpha:g}, heads={self.dims.n_layers}x{self.dims.n_heads}, "
            f"best probe acc={top:.2f}"
        )


# ---- fitting -----------------------------------------------------------------------------------
@torch.no_grad()
def _last_token_z(
    model: nn.Module, rows: list[tuple[list[int], list[int]]], batch_size: int, progress: bool
) -> Float[Tensor, "n n_layers n_heads d_head"]:
    """``hook_z`` of every layer at each row's last token (the ``hook_z`` site on the HF view)."""
    from ..edit import Backend
    from ..runners import runner_for

    if runner_for(model).backend is Backend.HOOK_POINTS:
        return _last_token_z_hook_points(model, rows, batch_size, progress)
    view = hf_view(model)
    dims = model_dims(model)
    tok = model.tokenizer
    pad = padding_id(tok)
    device = next(view.parameters()).device
    captured: list[Tensor] = [torch.empty(0)] * dims.n_layers
    last: Tensor | None = None

    def make(layer: int) -> SiteFn:
        def grab(z: Tensor) -> None:
            rows = torch.arange(z.shape[0], device=z.device)
            captured[layer] = z[rows, last.to(z.device)].float().cpu()

        return grab

    handles = [hf_hook(Site(SiteKind.HOOK_Z, i), make(i), view).register() for i in range(dims.n_layers)]
    feats = []
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="ITI activations", unit="batch", disable=not progress):
            batch = collate(rows[start : start + batch_size], pad, "right").to(device)
            last = batch.attention_mask.sum(-1) - 1
            view.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
            feats.append(torch.stack(captured, dim=1))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(feats)


@torch.no_grad()
def _last_token_z_hook_points(
    model: nn.Module, rows: list[tuple[list[int], list[int]]], batch_size: int, progress: bool
) -> Tensor:
    """:func:`_last_token_z` read at ``blocks.{l}.attn.hook_z`` (any TransformerLens model)."""
    from ..edit import _add_tl_hook
    from ..runners import runner_for

    runner = runner_for(model, "hook_points")
    dims = model_dims(model)
    tok: Any = model.tokenizer
    pad = padding_id(tok)
    captured: list[Tensor] = [torch.empty(0)] * dims.n_layers
    last: Tensor | None = None

    def make(layer: int) -> SiteFn:
        def grab(z: Tensor) -> None:
            captured[layer] = z[torch.arange(z.shape[0], device=z.device), last].float().cpu()

        return grab

    removers = [_add_tl_hook(model, *tl_hook(Site(SiteKind.HOOK_Z, i), make(i))) for i in range(dims.n_layers)]
    feats = []
    try:
        starts = range(0, len(rows), batch_size)
        for start in tqdm(starts, desc="ITI activations", unit="batch", disable=not progress):
            batch = collate(rows[start : start + batch_size], pad, "right").to(runner.device)
            last = batch.attention_mask.sum(-1) - 1
            runner(batch.input_ids, batch.attention_mask, batch.position_ids)
            feats.append(torch.stack(captured, dim=1))
    finally:
        for remove in removers:
            remove()
    return torch.cat(feats)


def _fit_probes(x: Tensor, y: Tensor, c: float, iters: int = 25) -> tuple[Tensor, Tensor]:
    """L2 logistic regression for every head at once: ``x [heads, n, d]``, ``y [n]``.

    Minimises ``0.5 |w|^2 + C * sum_i logloss`` (bias unpenalised), sklearn's objective, with
    damped Newton steps. Returns weights ``[heads, d]`` and biases ``[heads]``.
    """
    heads, n, d = x.shape
    xb = torch.cat([x, torch.ones(heads, n, 1, dtype=x.dtype)], dim=-1).double()
    yd = y.double()
    w = torch.zeros(heads, d + 1, dtype=torch.float64)
    reg = torch.eye(d + 1, dtype=torch.float64)
    reg[-1, -1] = 1e-8  # bias unpenalised (tiny ridge keeps the Hessian invertible)
    for _ in range(iters):
        p = torch.sigmoid(torch.einsum("hnd,hd->hn", xb, w))
        grad = c * torch.einsum("hnd,hn->hd", xb, p - yd) + w @ reg
        hess = c * torch.einsum("hnd,hn,hne->hde", xb, p * (1 - p), xb) + reg
        step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        w = w - step
        if float(step.abs().max()) < 1e-8:
            break
    return w[:, :d].float(), w[:, d].float()


def probe_accuracies(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, c: float = 1.0) -> Tensor:
    """Validation accuracy of a per-head probe: ``x [n, layer, head, d_head]`` -> ``[layer, head]``."""
    n_layers, n_heads, d = train_x.shape[1:]
    flat = lambda t: t.permute(1, 2, 0, 3).reshape(n_layers * n_heads, t.shape[0], d)  # noqa: E731
    w, b = _fit_probes(flat(train_x), train_y, c)
    logits = torch.einsum("hnd,hd->hn", flat(val_x), w) + b[:, None]
    acc = ((logits > 0).float() == val_y.float()).float().mean(-1)
    return acc.view(n_layers, n_heads)


def fit_iti(
    model: nn.Module,
    train: Sequence[Example],
    config: ItiConfig | None = None,
    *,
    style: PromptStyle = PromptStyle.ALPACA,
    max_length: int = 400,
    batch_size: int = 8,
    progress: bool = True,
) -> ItiEdit:
    """Fit ITI's probes, directions and scales on ``train`` (multiple-choice examples)."""
    config = config or ItiConfig()
    # at least 5 questions, to split into probe train / validation
    rng = random.Random(config.seed)  # draws the wrong options, then splits the questions
    rows = contrast_rows(
        model.tokenizer, train, method="ITI", min_questions=5, rng=rng, style=style, max_length=max_length
    )
    labels = [1, 0] * len(train)  # correct, then wrong, per question
    feats = _last_token_z(model, rows, batch_size, progress)  # [2 * n_questions, L, H, d]
    y = torch.tensor(labels)
    questions = list(range(len(train)))
    rng.shuffle(questions)
    n_val = max(1, round(config.probe_val_fraction * len(questions)))
    val_q = set(questions[:n_val])
    is_val = torch.tensor([i // 2 in val_q for i in range(len(rows))])
    acc = probe_accuracies(feats[~is_val], y[~is_val], feats[is_val], y[is_val], config.l2_c)

    theta = feats[y == 1].mean(0) - feats[y == 0].mean(0)  # [L, H, d]
    theta_hat = theta / theta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    proj = torch.einsum("nlhd,lhd->nlh", feats, theta_hat)
    edit = ItiEdit.for_model(model, config)
    edit.direction.copy_(theta_hat)
    edit.sigma.copy_(proj.std(dim=0))
    edit.probe_accuracy.copy_(acc)
    return edit.to(next(model.parameters()).device)
