"""The exact shortcut of true ablation: gold rows only, when accuracy is not wanted.

It must give the log-prob numbers of the reference path (every choice row), head by head.
"""

from __future__ import annotations

import pytest
import torch

from jolalens.analysis import ScoringData, ablation_scores
from jolalens.analysis.head_patching import HeadPatchRunner
from jolalens.data import Example, PromptStyle
from jolalens.testing import tiny_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def deep():
    """Four layers of a random Llama-style model."""
    return tiny_model(seed=3, n_layers=4)


def _data(model) -> ScoringData:
    """Multiple choice with prompts and answers of different lengths (right padding), one one-choice."""
    examples = [
        Example("Pick " + "x" * (3 * i), c, choices=("a", "bb", "ccc", "d")) for i, c in enumerate(["a", "bb", "ccc"])
    ]
    examples += [
        Example("Which? " * 2, "d", choices=("a", "bb", "ccc", "d")),
        Example("Say hi", "hi there", choices=("hi there",)),
    ]
    return ScoringData.from_examples(model.tokenizer, examples, style=PromptStyle.CLOZE)


def _assert_same(fast, full, *, accuracy: bool = True) -> None:
    assert fast.clean_logprob == pytest.approx(full.clean_logprob, abs=ATOL)
    torch.testing.assert_close(fast.logprob_drop, full.logprob_drop, atol=ATOL, rtol=0)
    if accuracy:
        assert fast.clean_accuracy == full.clean_accuracy
        torch.testing.assert_close(fast.accuracy_drop, full.accuracy_drop, atol=ATOL, rtol=0)
    assert full.logprob_drop.abs().max() > 1e-3  # a non-trivial comparison


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_gold_rows_only_give_the_same_logprob_drop(deep, monkeypatch, ablation):
    data = _data(deep)
    kw = {"ablation": ablation, "batch_size": 2, "heads_per_pass": 2}
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


def test_hook_points_backend_takes_the_option(deep):
    data = _data(deep)
    ref = ablation_scores(deep, data, ablation="mean", batch_size=3)
    tl = ablation_scores(deep, data, ablation="mean", batch_size=3, backend="hook_points", accuracy=False)
    assert tl.accuracy_drop is None
    torch.testing.assert_close(tl.logprob_drop, ref.logprob_drop, atol=2e-5, rtol=0)


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
