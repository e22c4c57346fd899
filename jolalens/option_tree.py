"""Score every option of an item in one row: the prompt once, the options as a token tree.

The fastest exact way to rank answer options by log-likelihood. Each row holds one prompt
followed by the trie of its options' input tokens (the options' tokens but their last; options
that share a beginning, such as ``answer1`` .. ``answer4``, share those nodes). A custom 4D
attention mask lets each tree node see the prompt and its own ancestors only, and its
position id is the prompt length plus its depth, so every option token is predicted exactly
as it would be in its own ``prompt + option`` sequence. Compared with the KV-cache path of
:func:`jolalens.scoring.cached_choice_logprobs` there is no cache copy per option, no padding
of options to the longest one, and the unembedding runs only at the trailing positions that
predict option tokens. Rows are sorted by length to keep padding small; a prefix shared by
every prompt (the Alpaca header) still runs once, from a KV cache.

Needs a Hugging Face model that takes a custom 4D mask (``sdpa`` or ``eager`` attention, every
row within the sliding window if the model has one); :func:`supports_option_tree` says so,
and the callers fall back to the KV-cache path otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import padding_id
from .edit import answer_positions
from .scoring import cache_keyword, prefix_cache, repeated_cache

__all__ = ["OptionTree", "option_tree_logprobs", "supports_option_tree"]

Encoded = tuple[list[int], list[list[int]]]  # prompt ids, and each choice's ids


@dataclass(frozen=True)
class OptionTree:
    """The trie of one item's option inputs: node tokens, parents (-1: the prompt) and depths.

    ``reads[k]`` lists, for option ``k``'s tokens in order, the node whose output predicts it
    (-1: the prompt's last position).
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    reads: list[list[int]]

    @classmethod
    def build(cls, choices: Sequence[Sequence[int]]) -> OptionTree:
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        children: dict[tuple[int, int], int] = {}
        reads = []
        for ids in choices:
            node, path = -1, [-1]
            for tok_id in ids[:-1]:  # the last token is only predicted, never an input
                key = (node, int(tok_id))
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(int(tok_id))
                    parents.append(node)
                    depths.append(depths[node] + 1 if node >= 0 else 0)
                node = children[key]
                path.append(node)
            reads.append(path)
        return cls(tokens, parents, depths, reads)

    def ancestors(self) -> torch.Tensor:
        """``[node, node]`` bool: True where the column node is the row node or one of its ancestors."""
        n = len(self.tokens)
        anc = torch.zeros((n, n), dtype=torch.bool)
        for i, parent in enumerate(self.parents):  # parents come before their children
            if parent >= 0:
                anc[i] = anc[parent]
            anc[i, i] = True
        return anc


def supports_option_tree(view: nn.Module, longest_row: int) -> bool:
    """Whether ``view`` (a Hugging Face causal LM) can score option trees exactly."""
    config = getattr(view, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if getattr(config, "logit_scale", None) is not None or not hasattr(view, "get_output_embeddings"):
        return False  # logits this module does not reproduce from the hidden states
    window = getattr(config, "sliding_window", None)
    return window is None or longest_row <= int(window)


def _body(view: nn.Module, cache: Any) -> Any:
    """``view``'s decoder as a function of ids, mask and positions, returning the last hidden states."""
    body: Any = view.base_model  # the decoder stack of a Hugging Face PreTrainedModel
    extra: dict[str, Any] = {cache_keyword(body): cache, "use_cache": True} if cache is not None else {}

    def run(**inputs: Any) -> torch.Tensor:
        return body(**inputs, **extra).last_hidden_state

    return run


def _unembed(view: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of a ``[rows, d_model]`` block of final hidden states, as ``view.forward`` computes them."""
    hf: Any = view  # a Hugging Face PreTrainedModel
    logits = hf.get_output_embeddings()(hidden.contiguous())
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _row_layout(
    prompt: list[int], tree: OptionTree, width: int, pad_id: int
) -> tuple[list[int], list[int], torch.Tensor]:
    """Left-padded ids, positions (from 0 at the prompt) and the row's own ``[width, width]`` mask."""
    n_p, n_t = len(prompt), len(tree.tokens)
    pad = width - n_p - n_t
    ids = [pad_id] * pad + prompt + tree.tokens
    pos = [0] * pad + list(range(n_p)) + [n_p + d for d in tree.depths]
    mask = torch.zeros((width, width), dtype=torch.bool)
    mask[pad : pad + n_p, pad : pad + n_p] = torch.tril(torch.ones((n_p, n_p), dtype=torch.bool))
    mask[pad + n_p :, pad : pad + n_p] = True
    mask[pad + n_p :, pad + n_p :] = tree.ancestors()
    idx = torch.arange(pad)
    mask[idx, idx] = True  # padding attends to itself only (no empty softmax rows)
    return ids, pos, mask


def option_tree_logprobs(
    view: nn.Module, tok: Any, encoded: Sequence[Encoded], batch_size: int, bar: Any, n_prefix: int = 0
) -> list[list[float]]:
    """Summed log-probs of each entry's choice ids after its prompt ids, one row per entry.

    ``n_prefix`` tokens at the start of every prompt (which must all share them) run once, from a
    KV cache. Returns the same as :func:`jolalens.scoring.cached_choice_logprobs`.
    """

    device = next(view.parameters()).device
    dtype = next(view.parameters()).dtype
    pad_id = padding_id(tok)
    trees = [OptionTree.build(choices) for _, choices in encoded]
    own = [len(p) - n_prefix for p, _ in encoded]
    shared = prefix_cache(view, encoded[0][0][:n_prefix])
    sums: list[list[float]] = [[] for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda i: own[i] + len(trees[i].tokens))
    blocked = torch.finfo(dtype).min
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(own[i] + len(trees[i].tokens) for i in idx)
        ids, pos, masks = [], [], []
        predicts = torch.zeros((len(idx), width), dtype=torch.bool)  # the prompt's last position, the nodes
        for r, i in enumerate(idx):
            r_ids, r_pos, r_mask = _row_layout(encoded[i][0][n_prefix:], trees[i], width, pad_id)
            ids.append(r_ids)
            pos.append(r_pos)
            masks.append(r_mask)
            predicts[r, width - 1 - len(trees[i].tokens) :] = True
        allowed = torch.stack(masks)  # [batch, query, key] over this call's tokens
        real = allowed.diagonal(dim1=1, dim2=2).clone()
        starts = torch.tensor([width - own[i] - len(trees[i].tokens) for i in idx])
        real &= torch.arange(width)[None, :] >= starts[:, None]
        cache = None
        if shared is not None:
            cache = repeated_cache(shared, len(idx))
            allowed = torch.cat([real[:, :, None].expand(-1, -1, n_prefix), allowed], dim=2)
        bias = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, blocked)[:, None]
        with answer_positions(predicts.to(device)):
            hidden = _body(view, cache)(
                input_ids=torch.tensor(ids, device=device),
                attention_mask=bias.to(device),
                position_ids=(torch.tensor(pos) + n_prefix).to(device),
            )
        logp = torch.log_softmax(_unembed(view, hidden[predicts.to(device)]).float(), dim=-1)  # [needed, vocab]
        row_start = 0
        for i in idx:
            tree, choices = trees[i], encoded[i][1]
            for path, c_ids in zip(tree.reads, choices, strict=True):
                rows = torch.tensor([row_start + 1 + node for node in path], device=device)  # -1: prompt's last
                sums[i].append(float(logp[rows, torch.tensor(c_ids, device=device)].sum()))
            row_start += 1 + len(tree.tokens)
        bar.update(len(idx))
    return sums
