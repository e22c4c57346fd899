"""Ablation and attribution head scores on tiny models, one with a planted answer head."""

from __future__ import annotations

import pytest
import torch

from jolalens.analysis import (
    Ablation,
    HeadScores,
    ScoringData,
    ablation_scores,
    attribution_scores,
    spearman,
)
from jolalens.analysis import ablation as ablation_module
from jolalens.data import Example
from jolalens.errors import DataError

from ._planted import PLANTED, copy_task, planted_model


@pytest.fixture(scope="module")
def planted():
    return planted_model()


@pytest.fixture(scope="module")
def copy_data():
    return copy_task()


def _mc_examples() -> list[Example]:
    return [Example(f"Pick {c}", c, choices=("a", "b", "c")) for c in "abcab"] + [Example("Say hi", "hi there")]


def _argmax(scores: torch.Tensor) -> tuple[int, int]:
    idx = int(scores.flatten().argmax())
    return divmod(idx, scores.shape[1])


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
@pytest.mark.parametrize("backend", ["hf_view", "hook_points"])
def test_planted_head_ranks_first(planted, copy_data, ablation, backend):
    scores = ablation_scores(planted, copy_data, ablation=ablation, backend=backend, batch_size=5)
    drop = scores.logprob_drop
    assert drop.shape == (2, 4)
    assert scores.clean_logprob > -2.0  # the planted head solves the task
    assert _argmax(drop) == PLANTED
    others = drop.flatten()[torch.arange(8) != PLANTED[0] * 4 + PLANTED[1]]
    assert drop[PLANTED] > 1.0
    assert drop[PLANTED] > 5 * others.abs().max()
    frame = scores.to_frame()
    top = frame.sort_values("rank").iloc[0]
    assert (top["label"], top["rank"]) == ("L1H2", 1)


def test_planted_head_carries_accuracy(planted):
    """Multiple choice over single tokens: the gold one is the token just seen."""
    gen = torch.Generator().manual_seed(1)
    rows, labels, ex_idx, gold = [], [], [], []
    n = 8
    for e in range(n):
        token, *wrong = torch.randperm(96, generator=gen)[:3].add(4).tolist()
        for choice in [token, *wrong]:
            rows.append([1, token, token, choice])
            labels.append([-100, -100, -100, choice])
            ex_idx.append(e)
            gold.append(choice == token)
    ids = torch.tensor(rows)
    data = ScoringData(
        ids,
        torch.tensor(labels),
        torch.ones_like(ids),
        torch.tensor(ex_idx),
        torch.tensor(gold),
        torch.ones(n, dtype=torch.bool),
    )
    scores = ablation_scores(planted, data, ablation="mean", batch_size=3)
    assert scores.clean_accuracy == 1.0
    assert scores.accuracy_drop is not None
    assert _argmax(scores.accuracy_drop) == PLANTED
    assert scores.accuracy_drop[PLANTED] >= 0.5
    assert scores.accuracy_drop.flatten().sort().values[-2] <= 0.125


def test_zero_ablation_matches_hand_computed_metric(tiny):
    """One head zeroed by hand with run_with_hooks: the scorer's metric is the same number."""
    data = ScoringData.from_examples(tiny.tokenizer, _mc_examples()[-1:] + [Example("Be brief", "ok")])
    scores = ablation_scores(tiny, data, ablation="zero", batch_size=2)

    def mean_answer_logprob(logits):
        logp = logits.log_softmax(-1)[:, :-1]
        target = data.labels[:, 1:]
        mask = target != -100
        got = logp.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
        return ((got * mask).sum(1) / mask.sum(1)).mean()

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 1, :] = 0
        return z

    clean = mean_answer_logprob(tiny(data.input_ids))
    ablated = mean_answer_logprob(tiny.run_with_hooks(data.input_ids, fwd_hooks=[("blocks.0.attn.hook_z", zero_head)]))
    assert scores.clean_logprob == pytest.approx(float(clean), abs=1e-5)
    assert float(scores.logprob_drop[0, 1]) == pytest.approx(float(clean - ablated), abs=1e-5)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_backends_batching_and_head_groups_agree(tiny, ablation):
    data = ScoringData.from_examples(tiny.tokenizer, _mc_examples(), max_length=32)
    fast = ablation_scores(tiny, data, ablation=ablation, batch_size=4)
    slow = ablation_scores(tiny, data, ablation=ablation, backend="hook_points", batch_size=3, heads_per_pass=2)
    assert fast.clean_logprob == pytest.approx(slow.clean_logprob, abs=1e-5)
    assert fast.clean_accuracy == slow.clean_accuracy
    torch.testing.assert_close(fast.logprob_drop, slow.logprob_drop, atol=2e-5, rtol=0)
    torch.testing.assert_close(fast.accuracy_drop, slow.accuracy_drop)
    assert fast.logprob_drop.abs().max() > 1e-4  # a non-trivial comparison


def test_attribution_tracks_mean_ablation(tiny, planted, copy_data):
    data = ScoringData.from_examples(tiny.tokenizer, _mc_examples(), max_length=32)
    exact = ablation_scores(tiny, data, ablation="mean", batch_size=6)
    approx = attribution_scores(tiny, data, ablation="mean", batch_size=6)
    assert approx.accuracy_drop is None
    assert approx.clean_logprob == pytest.approx(exact.clean_logprob, abs=1e-5)
    # Small effects on a random model: first order is close head by head.
    err = (exact.logprob_drop - approx.logprob_drop).abs().max()
    assert err < 0.2 * exact.logprob_drop.abs().max()
    assert _argmax(exact.logprob_drop) == _argmax(approx.logprob_drop)
    assert spearman(exact.logprob_drop, approx.logprob_drop) > 0.7
    pearson = torch.corrcoef(torch.stack([exact.logprob_drop.flatten(), approx.logprob_drop.flatten()]))[0, 1]
    assert pearson > 0.95
    # Both backends give the same gradients.
    tl = attribution_scores(tiny, data, ablation="mean", batch_size=3, backend="hook_points")
    torch.testing.assert_close(tl.logprob_drop, approx.logprob_drop, atol=1e-5, rtol=1e-3)
    # On the planted model the first-order estimate still singles out the planted head.
    for abl in ("mean", "resample"):
        assert _argmax(attribution_scores(planted, copy_data, ablation=abl).logprob_drop) == PLANTED


def test_results_are_cached_on_disk(tiny, tmp_path, monkeypatch):
    data = ScoringData.from_examples(tiny.tokenizer, _mc_examples()[:3], max_length=40)
    first = ablation_scores(tiny, data, ablation="mean", cache_dir=tmp_path)
    files = list(tmp_path.glob("ablation-mean-*.pt"))
    assert len(files) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the cached result should have been used")

    monkeypatch.setattr(ablation_module, "HeadPatchRunner", refuse)
    second = ablation_scores(tiny, data, ablation="mean", cache_dir=tmp_path)
    torch.testing.assert_close(first.logprob_drop, second.logprob_drop)
    assert second.clean_accuracy == first.clean_accuracy
    monkeypatch.undo()
    # Other data, another method or other weights: another key.
    ablation_scores(tiny, data, ablation="zero", cache_dir=tmp_path)
    attribution_scores(tiny, data, ablation="mean", cache_dir=tmp_path)
    with torch.no_grad():
        tiny.original_model.lm_head.weight.mul_(1.5)
    ablation_scores(tiny, data, ablation="mean", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 4


def test_head_scores_round_trip(tmp_path):
    scores = HeadScores(torch.randn(2, 3), None, -1.5, None, "ablation", "mean", 7)
    loaded = HeadScores.load(scores.save(tmp_path / "s.pt"))
    torch.testing.assert_close(loaded.logprob_drop, scores.logprob_drop)
    assert (loaded.accuracy_drop, loaded.n_examples, loaded.ablation) == (None, 7, "mean")


def test_bad_input_is_refused(tiny, copy_data):
    one = ScoringData.from_examples(tiny.tokenizer, [Example("Say hi", "hi")])
    with pytest.raises(DataError, match="at least 2 examples"):
        ablation_scores(tiny, one, ablation="resample")
    with pytest.raises(ValueError, match="ablation"):
        ablation_scores(tiny, one, ablation="gaussian")
    with pytest.raises(ValueError, match="batch_size"):
        ablation_scores(tiny, one, batch_size=0)
    with pytest.raises(DataError, match="no answer tokens"):
        ScoringData(
            copy_data.input_ids,
            torch.full_like(copy_data.labels, -100),
            copy_data.attention_mask,
            copy_data.example_index,
            copy_data.is_gold,
            copy_data.has_choices,
        )
    with pytest.raises(DataError, match="exactly one gold row"):
        ScoringData(
            copy_data.input_ids,
            copy_data.labels,
            copy_data.attention_mask,
            copy_data.example_index,
            torch.zeros_like(copy_data.is_gold),
            copy_data.has_choices,
        )
    assert Ablation("mean") is Ablation.MEAN
