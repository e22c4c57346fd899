"""Tiny classic ``HookedTransformer`` models for tests (TransformerLens 3.x; 4.x removed the class).

:func:`tiny_hooked_model` builds a random Llama-style (RMSNorm, rotary, gated MLP, grouped-query
attention) or GPT-2-style (LayerNorm, learned positions) model; :func:`hooked_twin` builds the
``HookedTransformer`` holding exactly the weights of a Llama-style ``TransformerBridge``, so the
two classes can be compared on one model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .hooked_loading import hooked_transformer_available, load_unprocessed
from .testing import char_tokenizer

__all__ = ["hooked_transformer_available", "hooked_twin", "tiny_hooked_model"]


def _llama_cfg(
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    d_head: int,
    d_mlp: int,
    d_vocab: int,
    name: str,
    n_ctx: int = 256,
    rotary_base: float = 10000.0,
) -> Any:
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        model_name=name,
        n_layers=n_layers,
        d_model=n_heads * d_head,
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=n_kv_heads,
        d_mlp=d_mlp,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn="silu",
        normalization_type="RMS",
        eps=1e-6,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=rotary_base,
        rotary_adjacent_pairs=False,
        gated_mlp=True,
        final_rms=True,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=False,
        dtype=torch.float32,
        device="cpu",
    )


def tiny_hooked_model(
    style: str = "llama",
    *,
    seed: int = 0,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_head: int = 8,
    d_mlp: int = 64,
) -> nn.Module:
    """A random ``HookedTransformer`` with the character tokenizer of :mod:`jolalens.testing`."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tokenizer = char_tokenizer()
    name = f"jolalens-tiny-hooked-{style}-L{n_layers}H{n_heads}"
    if style == "llama":
        cfg = _llama_cfg(n_layers, n_heads, n_kv_heads, d_head, d_mlp, len(tokenizer), name)
    elif style == "gpt2":
        cfg = HookedTransformerConfig(
            model_name=name,
            n_layers=n_layers,
            d_model=n_heads * d_head,
            d_head=d_head,
            n_heads=n_heads,
            d_mlp=d_mlp,
            d_vocab=len(tokenizer),
            n_ctx=256,
            act_fn="gelu_new",
            normalization_type="LN",
            positional_embedding_type="standard",
            default_prepend_bos=False,
            original_architecture="GPT2LMHeadModel",
            device="cpu",
        )
    else:
        raise ValueError(f"style must be 'llama' or 'gpt2', got {style!r}")
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    with torch.no_grad():  # visible biases, so that folding b_O is tested too
        for name_, p in model.named_parameters():
            if name_.endswith(("b_O", "b_in", "b_out")):
                p.normal_(0, 0.02)
    return model.eval()


def hooked_twin(bridge: Any) -> nn.Module:
    """A ``HookedTransformer`` with the very weights of a Llama-style bridge (no folding)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    hf: Any = bridge.original_model
    c = hf.config
    rope = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    cfg = _llama_cfg(
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        head_dim,
        c.intermediate_size,
        c.vocab_size,
        str(bridge.cfg.model_name),
        n_ctx=min(int(c.max_position_embeddings), 2048),
        rotary_base=float(rope),
    )
    cfg.eps = c.rms_norm_eps
    model = HookedTransformer(cfg, tokenizer=bridge.tokenizer, default_padding_side="right")
    state = convert_llama_weights(hf, cfg)
    load_unprocessed(model, state)
    return model.eval()
