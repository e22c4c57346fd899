"""The option-tree scorer (one row per item, options as a token trie) against two independent paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

from jolalens import JolaEdit
from jolalens.baselines.iti import ItiEdit
from jolalens.cloze import encoded_entries
from jolalens.data import Example, PromptStyle
from jolalens.option_tree import OptionTree, option_tree_logprobs, supports_option_tree
from jolalens.runners import attached_lm
from jolalens.scoring import cached_choice_logprobs, common_prefix, encode_choices, score_choices
from jolalens.testing import char_tokenizer

EXAMPLES = [
    Example("Pick the colour of the sky.", "blue", ("blue", "blues", "green", "b")),
    Example("Which is larger?", "ten", ("ten", "two")),
    Example("Say a long word here, please, and then stop.", "abcdefgh", ("abcdefgh", "abcxyz", "q", "abc")),
    Example("x", "yes", ("yes", "no", "yes!")),
]


def _no_bar():
    return tqdm(disable=True)


def _encoded(model, examples=EXAMPLES, style=PromptStyle.ALPACA):
    if style is PromptStyle.CLOZE:
        return encoded_entries(model.tokenizer, examples, 250)[0]
    return [encode_choices(model.tokenizer, ex, style, 250) for ex in examples]


def test_trie_shares_option_beginnings_and_reads_each_token_once():
    tree = OptionTree.build([[5, 6, 7], [5, 6, 8], [5, 9], [4]])
    assert tree.tokens == [5, 6] and tree.parents == [-1, 0]  # inputs: 5, then 5 -> 6
    assert tree.depths == [0, 1]
    assert tree.reads == [[-1, 0, 1], [-1, 0, 1], [-1, 0], [-1]]
    anc = tree.ancestors()
    assert anc.tolist() == [[True, False], [True, True]]


def test_trie_of_distinct_options_has_one_branch_each():
    tree = OptionTree.build([[1, 2, 3], [2, 2], [3]])
    assert tree.tokens == [1, 2, 2] and tree.parents == [-1, 0, -1]
    assert tree.reads == [[-1, 0, 1], [-1, 2], [-1]]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("style", [PromptStyle.ALPACA, PromptStyle.CLOZE])
def test_tree_equals_kv_cache_and_packed_paths(tiny, batch_size, style):
    enc = _encoded(tiny, style=style)
    with attached_lm(tiny, None) as view, torch.inference_mode():
        n_prefix = common_prefix([p for p, _ in enc])
        tree = option_tree_logprobs(view, tiny.tokenizer, enc, batch_size, _no_bar(), n_prefix=n_prefix)
        cached = cached_choice_logprobs(view, tiny.tokenizer, enc, batch_size, _no_bar())
    packed = score_choices(tiny, EXAMPLES, style=style, share_prefix=False, max_length=250, progress=False)
    for t, c, p in zip(tree, cached, packed, strict=True):
        np.testing.assert_allclose(t, c, atol=1e-4, rtol=0)
        np.testing.assert_allclose(t, p, atol=1e-4, rtol=0)


def _random_edit(model, make):
    edit = make.for_model(model) if hasattr(make, "for_model") else make(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in [*edit.parameters(), *edit.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
    return edit


@pytest.mark.parametrize("cls", [JolaEdit, ItiEdit])
def test_tree_equals_packed_path_with_an_edit(tiny, cls):
    """ITI edits only positions that predict answer tokens: the tree must declare exactly those."""
    edit = _random_edit(tiny, cls)
    fast = score_choices(tiny, EXAMPLES, edit=edit, max_length=250, progress=False, batch_size=3)
    packed = score_choices(tiny, EXAMPLES, edit=edit, share_prefix=False, max_length=250, progress=False)
    plain = score_choices(tiny, EXAMPLES, max_length=250, progress=False)
    for f, p in zip(fast, packed, strict=True):
        np.testing.assert_allclose(f, p, atol=1e-4, rtol=0)
    assert max(abs(a - b) for f, n in zip(fast, plain, strict=True) for a, b in zip(f, n, strict=True)) > 1e-3


def test_a_prompt_without_a_shared_prefix_and_a_single_token_option(tiny):
    enc = [([1, 10, 11], [[12], [13, 14]]), ([1, 20], [[21, 22, 23]])]
    with attached_lm(tiny, None) as view, torch.inference_mode():
        tree = option_tree_logprobs(view, tiny.tokenizer, enc, 2, _no_bar(), n_prefix=1)
        cached = cached_choice_logprobs(view, tiny.tokenizer, enc, 2, _no_bar())
        plain = option_tree_logprobs(view, tiny.tokenizer, enc, 2, _no_bar(), n_prefix=0)
    np.testing.assert_allclose(sum(tree, []), sum(cached, []), atol=1e-4, rtol=0)
    np.testing.assert_allclose(sum(plain, []), sum(cached, []), atol=1e-4, rtol=0)


def _tiny_gemma(softcap: float | None, window: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = char_tokenizer()
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=window,
        final_logit_softcapping=softcap,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(cfg).eval(), tok


def test_logit_softcapping_and_sliding_window_models_agree_or_fall_back():
    model, tok = _tiny_gemma(softcap=2.0, window=512)
    tok_model = type("M", (), {"tokenizer": tok})()
    enc = _encoded(tok_model)
    assert supports_option_tree(model, 60)
    with torch.inference_mode():
        tree = option_tree_logprobs(model, tok, enc, 2, _no_bar(), n_prefix=common_prefix([p for p, _ in enc]))
        cached = cached_choice_logprobs(model, tok, enc, 2, _no_bar())
    for t, c in zip(tree, cached, strict=True):
        np.testing.assert_allclose(t, c, atol=1e-4, rtol=0)
    short_window, _ = _tiny_gemma(softcap=None, window=16)
    assert not supports_option_tree(short_window, 60)  # a row longer than the window: the KV-cache path


def test_unsupported_attention_falls_back():
    model, _ = _tiny_gemma(softcap=None, window=512)
    model.config._attn_implementation = "flash_attention_2"
    assert not supports_option_tree(model, 10)
    assert not supports_option_tree(torch.nn.Linear(2, 2), 10)


CLOZE_EXAMPLES = [
    Example("Question: Which gas do plants take in?\nAnswer:", "carbon dioxide", ("oxygen", "carbon dioxide", "a")),
    Example("Question: Which metal is liquid?\nAnswer:", "mercury", ("iron", "mercury")),
]


def _one_sequence_at_a_time(model, examples, edit):
    """Each option alone: context + continuation in one unpadded row, no cache, no sharing."""
    from jolalens.cloze import cloze_pairs, encode_pair
    from jolalens.edit import answer_positions

    out = []
    with attached_lm(model, edit) as view, torch.inference_mode():
        for ex in examples:
            row = []
            for context, continuation in cloze_pairs(ex):
                ctx, cont = encode_pair(model.tokenizer, context, continuation)
                ids = torch.tensor([ctx + cont])
                predicts = torch.zeros(ids.shape, dtype=torch.bool)
                predicts[0, len(ctx) - 1 : -1] = True
                with answer_positions(predicts):
                    logp = torch.log_softmax(view(input_ids=ids).logits.float(), dim=-1)
                row.append(float(logp[0, len(ctx) - 1 : -1].gather(-1, torch.tensor(cont)[:, None]).sum()))
            out.append(row)
    return out


@pytest.mark.parametrize("method", ["jola", "iti", "loreft"])
def test_cloze_scores_with_an_edit_equal_one_sequence_at_a_time(tiny, method):
    """LoReFT edits the first and last prompt tokens: it must see each context whole, never split by a cache."""
    from jolalens.baselines.loreft import LoreftConfig, LoreftEdit
    from jolalens.cloze import score_cloze

    cls = {"jola": JolaEdit, "iti": ItiEdit}.get(method)
    edit = (
        _random_edit(tiny, cls)
        if cls
        else _random_edit(tiny, lambda m: LoreftEdit.for_model(m, LoreftConfig(first_n=2, last_n=2)))
    )
    ours = score_cloze(tiny, CLOZE_EXAMPLES, edit=edit, batch_size=2, max_length=250, progress=False)
    reference = _one_sequence_at_a_time(tiny, CLOZE_EXAMPLES, edit)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
