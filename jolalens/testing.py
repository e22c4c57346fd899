"""Tiny random models for tests and examples: no download, built in well under a second."""

from __future__ import annotations

import tempfile
from functools import lru_cache

import torch
from torch import nn

__all__ = ["char_tokenizer", "choice_splits", "tiny_gpt2_model", "tiny_model"]


@lru_cache(maxsize=1)
def _char_tokenizer_dir() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for ch in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,
    )
    path = tempfile.mkdtemp(prefix="jolalens-chartok-")
    fast.save_pretrained(path)
    return path


def char_tokenizer():
    """A character-level tokenizer (100 ids) that prepends ``<s>``; built offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_char_tokenizer_dir())


def tiny_model(
    *,
    seed: int = 0,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_head: int = 8,
    d_mlp: int = 64,
    tie_word_embeddings: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> nn.Module:
    """A random Llama-style ``TransformerBridge`` with grouped-query attention."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer()
    config = LlamaConfig(  # type: ignore[call-arg]  # transformers 5 takes rope_theta via kwargs
        vocab_size=len(tokenizer),
        hidden_size=n_heads * d_head,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=d_head,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    # transformers types .to() wrongly (a decorated method expecting the model as argument)
    hf = LlamaForCausalLM(config).to(dtype).eval()  # type: ignore[arg-type]
    if device is not None:
        hf.to(device)
    bridge = TransformerBridge.boot_transformers(
        f"jolalens-tiny-llama-L{n_layers}H{n_heads}", hf_model=hf, tokenizer=tokenizer, dtype=dtype, device=device
    )
    bridge.eval()
    return bridge


def tiny_gpt2_model(
    *, seed: int = 0, n_layers: int = 2, n_heads: int = 4, d_head: int = 8, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """A random GPT-2 ``TransformerBridge``: fused ``Conv1D`` ``c_attn``/``c_proj``, no ``o_proj``.

    The ``c_proj`` biases are drawn non-zero (GPT-2 initialises them to zero), so that folding
    an additive edit into them is visible.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = char_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=n_heads * d_head,
        n_layer=n_layers,
        n_head=n_heads,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(config).to(dtype).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_proj.bias.normal_(0, 0.02)
    bridge = TransformerBridge.boot_transformers(
        f"jolalens-tiny-gpt2-L{n_layers}H{n_heads}", hf_model=hf, tokenizer=tokenizer, dtype=dtype
    )
    bridge.eval()
    return bridge


def choice_splits(task: object, n_train: int, n_valid: int, n_test: int, seed: int = 0, **_: object):
    """A synthetic three-option task in the shape of ``jolalens.tasks.load_task_splits``.

    Patched in for the real loader, it lets the comparison runner run without any data files.
    """
    from .data import Example
    from .tasks.splits import TaskSplits

    def make(n: int, offset: int) -> list[Example]:
        return [
            Example(f"pick {c} {i + offset}", c, choices=("a", "b", "c"))
            for i, c in zip(range(n), "abc" * n, strict=False)
        ]

    return TaskSplits(make(n_train, seed), make(n_valid, 100), make(n_test, 200))
