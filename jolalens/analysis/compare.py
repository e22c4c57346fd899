"""Compare head selections and head scores: overlap, Jaccard, Spearman, AUROC, random controls.

Every function takes ``[n_layers, n_heads]`` tensors (scores, gates) or sets of ``(layer, head)``
pairs and returns floats or pandas DataFrames. Ties in a ranking are broken by the flat head
index (layer-major), so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = [
    "HeadSet",
    "auroc",
    "compare_methods",
    "compare_selection",
    "head_label",
    "head_set",
    "hypergeometric_p_value",
    "jaccard",
    "jaccard_matrix",
    "layer_distribution",
    "overlap_at_k",
    "permutation_p_value",
    "spearman",
    "top_k",
]

HeadSet = frozenset[tuple[int, int]]


def head_label(layer: int, head: int) -> str:
    """TransformerLens' head label, ``L{layer}H{head}``."""
    return f"L{layer}H{head}"


def _check_map(values: Tensor, name: str = "scores") -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 2:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{name} must be a [n_layers, n_heads] tensor, got {shape}")
    if not bool(torch.isfinite(values.float()).all()):
        raise ValueError(f"{name} holds NaN or inf values")
    return values.detach().float().cpu()


def _check_same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"head maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def top_k(scores: Float[Tensor, "n_layers n_heads"], k: int) -> HeadSet:
    """The ``k`` heads with the highest scores (ties: lower flat index first)."""
    scores = _check_map(scores)
    n = scores.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] for {tuple(scores.shape)} heads, got {k}")
    flat = scores.flatten()
    # Stable sort on the negated scores keeps the lower index first among ties.
    order = torch.sort(-flat, stable=True).indices[:k]
    n_heads = scores.shape[1]
    return frozenset((int(i) // n_heads, int(i) % n_heads) for i in order)


def head_set(
    values: Float[Tensor, "n_layers n_heads"] | Bool[Tensor, "n_layers n_heads"], threshold: float = 0.0
) -> HeadSet:
    """Heads whose value is above ``threshold`` (for JoLA gates: the heads open at evaluation)."""
    values = _check_map(values, "values")
    return frozenset((int(lay), int(hd)) for lay, hd in (values > threshold).nonzero().tolist())


def _as_set(heads: Iterable[tuple[int, int]] | Tensor) -> HeadSet:
    if isinstance(heads, Tensor):
        return head_set(heads)
    return frozenset((int(lay), int(hd)) for lay, hd in heads)


def jaccard(a: Iterable[tuple[int, int]] | Tensor, b: Iterable[tuple[int, int]] | Tensor) -> float:
    """``|A & B| / |A | B|``; two empty selections count as identical (1.0)."""
    sa, sb = _as_set(a), _as_set(b)
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


def overlap_at_k(a: Float[Tensor, "n_layers n_heads"], b: Float[Tensor, "n_layers n_heads"], k: int) -> float:
    """Fraction of the top-``k`` heads of ``a`` that are also in the top-``k`` of ``b``."""
    _check_same_shape(a, b)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return len(top_k(a, k) & top_k(b, k)) / k


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: Float[Tensor, "n_layers n_heads"], b: Float[Tensor, "n_layers n_heads"]) -> float:
    """Spearman rank correlation over all heads (average ranks for ties); NaN if one map is constant."""
    a, b = _check_map(a, "a"), _check_map(b, "b")
    _check_same_shape(a, b)
    ra = _average_ranks(a.flatten().double().numpy())
    rb = _average_ranks(b.flatten().double().numpy())
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float("nan") if denom == 0 else float((ra * rb).sum() / denom)


def auroc(
    scores: Float[Tensor, "n_layers n_heads"], positives: Bool[Tensor, "n_layers n_heads"] | Iterable[tuple[int, int]]
) -> float:
    """Probability that a random positive head scores above a random negative one (ties count 1/2).

    E.g. ``auroc(gate, top-k-of-ablation)``: how well JoLA's gate predicts ablation importance.
    """
    scores = _check_map(scores)
    if isinstance(positives, Tensor):
        if positives.shape != scores.shape:
            raise ValueError(f"positives {tuple(positives.shape)} and scores {tuple(scores.shape)} differ in shape")
        mask = positives.bool().cpu()
    else:
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for lay, hd in positives:
            mask[lay, hd] = True
    n_pos, n_neg = int(mask.sum()), int((~mask).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both positive and negative heads, got {n_pos} positive and {n_neg} negative")
    ranks = _average_ranks(scores.flatten().double().numpy())
    pos_rank_sum = ranks[mask.flatten().numpy()].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def hypergeometric_p_value(overlap: int, n_total: int, k_a: int, k_b: int) -> float:
    """P(|A & B| >= overlap) for independent uniform random sets of sizes ``k_a`` and ``k_b``."""
    if not (0 <= k_a <= n_total and 0 <= k_b <= n_total):
        raise ValueError(f"set sizes {k_a}, {k_b} must lie in [0, {n_total}]")
    denom = math.comb(n_total, k_b)
    upper = min(k_a, k_b)
    tail = sum(math.comb(k_a, i) * math.comb(n_total - k_a, k_b - i) for i in range(max(overlap, 0), upper + 1))
    return tail / denom


def permutation_p_value(
    selected: Iterable[tuple[int, int]] | Tensor,
    reference: Iterable[tuple[int, int]] | Tensor,
    shape: tuple[int, int],
    *,
    n_permutations: int = 10_000,
    seed: int = 0,
) -> tuple[float, Float[Tensor, " n_permutations"]]:
    """Random-head control: p-value of ``|selected & reference|`` against random sets of equal size.

    Returns ``(p, null_overlaps)`` with ``p = (1 + #{null >= observed}) / (1 + n_permutations)``.
    """
    sel, ref = _as_set(selected), _as_set(reference)
    n_layers, n_heads = shape
    n_total = n_layers * n_heads
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    for lay, hd in sel | ref:
        if not (0 <= lay < n_layers and 0 <= hd < n_heads):
            raise ValueError(f"head {head_label(lay, hd)} lies outside the {shape} head grid")
    observed = len(sel & ref)
    ref_mask = torch.zeros(n_total, dtype=torch.bool)
    for lay, hd in ref:
        ref_mask[lay * n_heads + hd] = True
    gen = torch.Generator().manual_seed(seed)
    # argsort of uniform noise: one random permutation of all heads per row; take len(sel).
    draws = torch.rand(n_permutations, n_total, generator=gen).argsort(dim=1)[:, : len(sel)]
    null = ref_mask[draws].sum(dim=1).float()
    p = (1.0 + float((null >= observed).sum())) / (1.0 + n_permutations)
    return p, null


def compare_selection(
    selection_scores: Float[Tensor, "n_layers n_heads"],
    importance: Float[Tensor, "n_layers n_heads"],
    *,
    threshold: float = 0.0,
    k: int | None = None,
    n_permutations: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row of agreement metrics between a JoLA map (e.g. gates) and an importance map.

    The selection is the heads with ``selection_scores > threshold``; ``k`` (default: its size)
    is the size of the importance top set it is compared with. Columns: n_selected, k, overlap,
    expected_overlap (random sets), overlap_at_k (top-k of both rankings), jaccard (selection vs
    importance top-k), spearman (all heads), auroc (selection score predicting the importance
    top-k), p_permutation, p_hypergeometric, random_overlap_mean, random_overlap_q95.
    """
    sel_scores = _check_map(selection_scores, "selection_scores")
    imp = _check_map(importance, "importance")
    _check_same_shape(sel_scores, imp)
    selected = head_set(sel_scores, threshold)
    k = len(selected) if k is None else int(k)
    n_total = imp.numel()
    if not 1 <= k < n_total:
        raise ValueError(f"k={k}: need 1 <= k < {n_total} heads (no head is above threshold {threshold}? pass k)")
    important = top_k(imp, k)
    overlap = len(selected & important)
    shape = (int(imp.shape[0]), int(imp.shape[1]))
    p_perm, null = permutation_p_value(selected, important, shape, n_permutations=n_permutations, seed=seed)
    return pd.DataFrame(
        [
            {
                "n_selected": len(selected),
                "k": k,
                "overlap": overlap,
                "expected_overlap": len(selected) * k / n_total,
                "overlap_at_k": overlap_at_k(sel_scores, imp, k),
                "jaccard": jaccard(selected, important),
                "spearman": spearman(sel_scores, imp),
                "auroc": auroc(sel_scores, important),
                "p_permutation": p_perm,
                "p_hypergeometric": hypergeometric_p_value(overlap, n_total, len(selected), k),
                "random_overlap_mean": float(null.mean()),
                "random_overlap_q95": float(null.quantile(0.95)),
            }
        ]
    )


def compare_methods(
    maps: Mapping[str, Float[Tensor, "n_layers n_heads"]],
    reference: Float[Tensor, "n_layers n_heads"],
    k: int,
) -> pd.DataFrame:
    """One row per method: overlap@k, Jaccard@k and Spearman of its map against ``reference``."""
    ref = _check_map(reference, "reference")
    rows = []
    for name, values in maps.items():
        values = _check_map(values, name)
        _check_same_shape(values, ref)
        rows.append(
            {
                "method": name,
                "k": k,
                "overlap_at_k": overlap_at_k(values, ref, k),
                "jaccard_at_k": jaccard(top_k(values, k), top_k(ref, k)),
                "spearman": spearman(values, ref),
            }
        )
    return pd.DataFrame(rows)


def layer_distribution(
    selection: Iterable[tuple[int, int]] | Tensor, n_layers: int, n_heads: int | None = None
) -> pd.DataFrame:
    """Selected heads per layer: columns layer, n_selected, fraction_of_selected (and of_layer)."""
    heads = _as_set(selection)
    if n_heads is None and isinstance(selection, Tensor):
        n_heads = int(selection.shape[1])
    counts = [0] * n_layers
    for lay, _ in heads:
        if not 0 <= lay < n_layers:
            raise ValueError(f"layer {lay} is outside 0..{n_layers - 1}")
        counts[lay] += 1
    total = max(1, len(heads))
    frame = pd.DataFrame(
        {"layer": range(n_layers), "n_selected": counts, "fraction_of_selected": [c / total for c in counts]}
    )
    if n_heads is not None:
        frame["fraction_of_layer"] = frame["n_selected"] / n_heads
    return frame


def jaccard_matrix(selections: Mapping[str, Iterable[tuple[int, int]] | Tensor]) -> pd.DataFrame:
    """Pairwise Jaccard of named selections (runs across seeds or tasks); a square DataFrame.

    A tensor value is read as a map and thresholded at 0 (JoLA's open gates).
    """
    if not selections:
        raise ValueError("jaccard_matrix needs at least one selection")
    names = list(selections)
    sets = {name: _as_set(value) for name, value in selections.items()}
    data = [[jaccard(sets[a], sets[b]) for b in names] for a in names]
    return pd.DataFrame(data, index=pd.Index(names, name="run"), columns=pd.Index(names, name="run"))
