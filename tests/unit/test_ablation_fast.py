"""The exact shortcuts of true ablation: gold rows only, and resuming at the ablated layer.

Both must give the numbers of the reference path (every choice row, every layer per pass),
head by head, so a suffix that starts at the wrong layer shows up in the per-layer scores.
"""

from __future__ import annotations

import logging

import pytest
import torch

from jolalens.analysis import ScoringData, ablation_scores
from jolalens.analysis import ablation as ablation_module
from jolalens.analysis.head_patching import HeadPatchRunner
from jolalens.analysis.layer_suffix import LayerSuffix
from jolalens.data import Example, PromptStyle
from jolalens.hf_view import hf_view
from jolalens.testing import char_tokenizer, tiny_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def deep():
    """Four layers, so that resuming at layer 1, 2 or 3 are different cases."""
    return tiny_model(seed=3, n_layers=4)


@pytest.fixture(scope="module")
def gemma():
    """A tiny Gemma 3 bridge: sliding (window 4) and full attention layers, scaled embeddings, logit soft-capping."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = char_tokenizer()
    config = Gemma3TextConfig(
        architectures=["Gemma3ForCausalLM"],
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=4,
        final_logit_softcapping=3.0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(config).eval()
    bridge = TransformerBridge.boot_transformers("jolalens-tiny-gemma3", hf_model=hf, tokenizer=tok)
    bridge.eval()
    return bridge


def _data(model) -> ScoringData:
    """Multiple choice with prompts and answers of different lengths (right padding), one one-choice.

    Not in order of length, so batching by length regroups them.
    """
    examples = [Example("Which? " * 2, "d", choices=("a", "bb", "ccc", "d"))]
    examples += [
        Example("Pick " + "x" * (3 * i), c, choices=("a", "bb", "ccc", "d")) for i, c in enumerate(["a", "bb", "ccc"])
    ]
    examples += [Example("Say hi", "hi there", choices=("hi there",))]
    return ScoringData.from_examples(model.tokenizer, examples, style=PromptStyle.CLOZE)


def _assert_same(fast, full, *, accuracy: bool = True) -> None:
    assert fast.clean_logprob == pytest.approx(full.clean_logprob, abs=ATOL)
    torch.testing.assert_close(fast.logprob_drop, full.logprob_drop, atol=ATOL, rtol=0)
    if accuracy:
        assert fast.clean_accuracy == full.clean_accuracy
        torch.testing.assert_close(fast.accuracy_drop, full.accuracy_drop, atol=ATOL, rtol=0)
    assert full.logprob_drop.abs().max() > 1e-3  # a non-trivial comparison


def _resumed_layers(monkeypatch) -> list[int]:
    """Record the layer of every resumed forward."""
    layers: list[int] = []
    real = LayerSuffix.starting_at

    def spy(self, layer, hidden):
        layers.append(layer)
        return real(self, layer, hidden)

    monkeypatch.setattr(LayerSuffix, "starting_at", spy)
    return layers


def _unembedded_rows(model) -> tuple[list[int], object]:
    """Record the batch size of every output of ``lm_head`` (1: gathered answer positions)."""
    sizes: list[int] = []
    unembed = hf_view(model).get_output_embeddings()
    handle = unembed.register_forward_hook(lambda module, args, out: sizes.append(out.shape[0]))
    return sizes, handle


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
@pytest.mark.parametrize(("batch_size", "heads_per_pass"), [(1, None), (2, 3), (5, 1)])
def test_resuming_at_the_layer_matches_full_forwards(deep, monkeypatch, ablation, batch_size, heads_per_pass):
    data = _data(deep)
    kw = {"ablation": ablation, "batch_size": batch_size, "heads_per_pass": heads_per_pass}
    full = ablation_scores(deep, data, full_forward=True, **kw)
    resumed = _resumed_layers(monkeypatch)
    sizes, handle = _unembedded_rows(deep)
    try:
        fast = ablation_scores(deep, data, **kw)
    finally:
        handle.remove()
    assert set(resumed) == {0, 1, 2, 3}  # the shortcut ran, at every layer
    assert sizes.count(1) >= len(resumed)  # ablated passes unembed the answer positions alone
    _assert_same(fast, full)
    # per layer, not only in sum: each layer's heads keep their own scores
    assert not torch.allclose(full.logprob_drop[1], full.logprob_drop[2], atol=1e-3)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
@pytest.mark.parametrize("full_forward", [False, True])
def test_gold_rows_only_give_the_same_logprob_drop(deep, monkeypatch, ablation, full_forward):
    data = _data(deep)
    kw = {"ablation": ablation, "batch_size": 2, "heads_per_pass": 2, "full_forward": full_forward}
    full = ablation_scores(deep, data, **kw)
    rows: list[int] = []
    real = HeadPatchRunner.logits

    def spy(self, input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return real(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(HeadPatchRunner, "logits", spy)
    gold = ablation_scores(deep, data, accuracy=False, **kw)
    assert gold.accuracy_drop is None and gold.clean_accuracy is None
    assert gold.n_examples == full.n_examples == data.n_examples
    _assert_same(gold, full, accuracy=False)
    assert max(rows) <= 2 * 2  # batch_size examples x heads_per_pass copies, one row each
    frame = gold.to_frame()
    assert frame["accuracy_drop"].isna().all()


def test_hook_points_backend_takes_both_options(deep):
    data = _data(deep)
    ref = ablation_scores(deep, data, ablation="mean", batch_size=3, full_forward=True)
    tl = ablation_scores(deep, data, ablation="mean", batch_size=3, backend="hook_points", accuracy=False)
    assert tl.accuracy_drop is None
    torch.testing.assert_close(tl.logprob_drop, ref.logprob_drop, atol=2e-5, rtol=0)


@pytest.mark.parametrize("ablation", ["mean", "resample"])
def test_gemma3_sliding_layers_resume_exactly(gemma, monkeypatch, ablation):
    data = _data(gemma)
    full = ablation_scores(gemma, data, ablation=ablation, batch_size=2, full_forward=True)
    resumed = _resumed_layers(monkeypatch)
    fast = ablation_scores(gemma, data, ablation=ablation, batch_size=2)
    assert set(resumed) == {0, 1, 2, 3}
    _assert_same(fast, full)


def _one_layer_early(monkeypatch) -> None:
    """A broken suffix: layer l-1 runs again, on the residual stream that enters layer l."""
    real = LayerSuffix.starting_at

    def early(self, layer, hidden):
        return real(self, max(layer - 1, 0), hidden)

    monkeypatch.setattr(LayerSuffix, "starting_at", early)


@pytest.mark.parametrize("ablation", ["mean", "resample"])
def test_batching_by_length_changes_nothing(deep, monkeypatch, ablation):
    """Batches of like length, and resample's pairs renumbered: the numbers of the given order."""
    data = _data(deep)
    assert data.by_length()[1].tolist() != list(range(data.n_examples))  # the order does change
    kw = {"ablation": ablation, "batch_size": 2, "seed": 5}
    sorted_run = ablation_scores(deep, data, **kw)
    monkeypatch.setattr(ScoringData, "by_length", lambda self: (self, torch.arange(self.n_examples)))
    given_order = ablation_scores(deep, data, **kw)
    _assert_same(sorted_run, given_order)


def test_scoring_data_selection(deep):
    data = _data(deep)
    gold = data.gold_only()
    assert gold.n_rows == gold.n_examples == data.n_examples and not bool(gold.has_choices.any())
    torch.testing.assert_close(gold.input_ids, data.input_ids[data.gold_rows(), : gold.input_ids.shape[1]])
    picked = data.select(torch.tensor([3, 0]))
    assert picked.n_examples == 2 and picked.n_rows == 8
    assert picked.example_index.tolist() == [0] * 4 + [1] * 4
    torch.testing.assert_close(picked.labels[4:], data.labels[:4, : picked.labels.shape[1]])
    by_length, order = data.by_length()
    lengths = by_length.attention_mask.sum(1)
    longest = [int(lengths[by_length.example_index == e].max()) for e in range(by_length.n_examples)]
    assert longest == sorted(longest) and sorted(order.tolist()) == list(range(data.n_examples))


def test_a_suffix_at_the_wrong_layer_is_caught(deep, monkeypatch, caplog):
    data = _data(deep)
    full = ablation_scores(deep, data, ablation="mean", batch_size=2, full_forward=True)
    _one_layer_early(monkeypatch)
    # the per-layer comparison sees it (the clean-logits check disabled) ...
    monkeypatch.setattr(ablation_module, "_agrees", lambda reference, shortcut, what: True)
    wrong = ablation_scores(deep, data, ablation="mean", batch_size=2)
    assert (wrong.logprob_drop[1:] - full.logprob_drop[1:]).abs().max() > 1e-3
    torch.testing.assert_close(wrong.logprob_drop[0], full.logprob_drop[0], atol=ATOL, rtol=0)
    # ... and the check falls back to full forwards, with a warning, so the numbers stay right
    monkeypatch.undo()
    _one_layer_early(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="jolalens.analysis.ablation"):
        fallback = ablation_scores(deep, data, ablation="mean", batch_size=2)
    assert "resuming at layer 2 changes the clean log-probs" in caplog.text
    assert "unembedding" not in caplog.text  # the other shortcut stays
    _assert_same(fallback, full)


def test_a_wrong_gather_is_caught(deep, monkeypatch, caplog):
    data = _data(deep)
    full = ablation_scores(deep, data, ablation="zero", batch_size=2, full_forward=True)
    real = HeadPatchRunner.row_logprobs

    def shifted(self, input_ids, attention_mask, labels, *args, answer_only=False, **kwargs):
        if answer_only:  # off by one position: the gathered rows no longer match the labels
            labels = torch.roll(labels, 1, dims=1)
        return real(self, input_ids, attention_mask, labels, *args, answer_only=answer_only, **kwargs)

    monkeypatch.setattr(HeadPatchRunner, "row_logprobs", shifted)
    with caplog.at_level(logging.WARNING, logger="jolalens.analysis.ablation"):
        fallback = ablation_scores(deep, data, ablation="zero", batch_size=2)
    assert "unembedding the answer positions alone changes the clean log-probs" in caplog.text
    _assert_same(fallback, full)


def test_layer_list_is_restored(deep):
    from jolalens.hf_view import decoder_layers

    view = hf_view(deep)
    before = list(decoder_layers(view))
    suffix = LayerSuffix(view)
    with pytest.raises(RuntimeError, match="boom"), suffix.starting_at(2, torch.zeros(1, 3, 32)):
        assert decoder_layers(view)[0] is not before[0]
        raise RuntimeError("boom")
    assert list(decoder_layers(view)) == before
    with pytest.raises(ValueError, match="out of range"), suffix.starting_at(4, torch.zeros(1, 3, 32)):
        pass


def test_cache_keeps_logprob_only_scores_apart(deep, tmp_path):
    data = _data(deep)
    gold = ablation_scores(deep, data, ablation="zero", accuracy=False, cache_dir=tmp_path)
    full = ablation_scores(deep, data, ablation="zero", cache_dir=tmp_path)
    assert full.accuracy_drop is not None  # not the cached log-prob-only result
    assert len(list(tmp_path.glob("*.pt"))) == 2
    again = ablation_scores(deep, data, ablation="zero", accuracy=False, cache_dir=tmp_path)
    assert again.accuracy_drop is None
    torch.testing.assert_close(again.logprob_drop, gold.logprob_drop)
    # a full result also serves a log-prob-only request
    for path in tmp_path.glob("*.pt"):
        path.unlink()
    ablation_scores(deep, data, ablation="zero", cache_dir=tmp_path)
    served = ablation_scores(deep, data, ablation="zero", accuracy=False, cache_dir=tmp_path)
    assert served.accuracy_drop is None and served.clean_accuracy is None
    assert len(list(tmp_path.glob("*.pt"))) == 1
