"""A tiny model with one planted head (L1H2) that alone copies the current token to the logits."""

from __future__ import annotations

import torch

from jolalens.analysis import ScoringData
from jolalens.hf_view import hf_view

PLANTED = (1, 2)


def planted_model(seed: int = 0):
    """d_model 64 split in four bands: tokens live in [0, 16); only L1H2 reads them (via its
    value) and writes them, rotated, into [16, 32), the only band the unembedding reads. Every
    other head and both MLPs write into [32, 64) only, so they touch the answer only through
    the RMS norms. L1H2's query is zero, so it attends uniformly to the prefix."""
    from jolalens.testing import tiny_model

    model = tiny_model(seed=seed, n_heads=4, n_kv_heads=2, d_head=16)
    view = hf_view(model)
    gen = torch.Generator().manual_seed(seed)
    vocab = view.model.embed_tokens.weight.shape[0]
    token_dirs = torch.nn.functional.normalize(torch.randn(vocab, 16, generator=gen), dim=-1)
    layer, head = PLANTED
    d_head = 16
    kv = head // 2  # GQA: query heads 2, 3 share KV head 1
    cols = slice(head * d_head, (head + 1) * d_head)
    with torch.no_grad():
        emb = view.model.embed_tokens.weight
        emb.zero_()
        emb[:, :16] = token_dirs
        emb[:, 32:] = 0.1 * torch.randn(vocab, 32, generator=gen)
        for block in view.model.layers:
            block.self_attn.o_proj.weight[:32] = 0
            block.mlp.down_proj.weight[:32] = 0
        attn = view.model.layers[layer].self_attn
        attn.q_proj.weight[cols] = 0
        attn.v_proj.weight[kv * d_head : (kv + 1) * d_head] = 0
        attn.v_proj.weight[kv * d_head : (kv + 1) * d_head, :16] = torch.eye(16)
        attn.o_proj.weight[:, cols] = 0
        attn.o_proj.weight[16:32, cols] = torch.eye(16)
        view.lm_head.weight.zero_()
        view.lm_head.weight[:, 16:32] = 12.0 * token_dirs
    return model


def copy_task(n: int = 12, seed: int = 0) -> ScoringData:
    """Rows ``<s> t t t`` with the last two tokens as the answer: predict the token just seen."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 100, (n,), generator=gen)
    ids = torch.stack([torch.ones(n, dtype=torch.long), tokens, tokens, tokens], dim=1)
    labels = ids.clone()
    labels[:, :2] = -100
    return ScoringData(
        input_ids=ids,
        labels=labels,
        attention_mask=torch.ones_like(ids),
        example_index=torch.arange(n),
        is_gold=torch.ones(n, dtype=torch.bool),
        has_choices=torch.zeros(n, dtype=torch.bool),
    )
