"""Cross-check of the cloze protocol against lm-evaluation-harness on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest

from jolalens.cloze import cloze_pairs, option_lengths, score_cloze
from jolalens.data import Example
from jolalens.evaluate import evaluate
from jolalens.hf_view import hf_view
from jolalens.tasks import custom_task

lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface")
from lm_eval.api.instance import Instance  # noqa: E402

EXAMPLES = [
    Example(
        "Question: Which gas do plants take in?\nAnswer:", "carbon dioxide", ("oxygen", "carbon dioxide", "helium", "a")
    ),
    Example(
        "Roof shingle removal: A man is sitting on a roof. He",
        "starts pulling up roofing.",
        ("is using wrap.", " starts pulling up roofing.", "is holding a cube.", "starts pulling up roofing."),
    ),
    Example("A passage.\nQuestion: is it true?\nAnswer:", "yes", ("no", "yes")),
    Example(
        "Q: Tracy resisted. What does Tracy need to do before this?\nA:",
        "go",
        ("make a new plan", "go", "Find somewhere to go"),
    ),
    Example(
        "always got the easier cases.",
        "Maria",
        ("Sarah", "Maria"),
        choice_contexts=(
            "Sarah was a better surgeon than Maria so Sarah",
            "Sarah was a better surgeon than Maria so Maria",
        ),
    ),
    Example("Context with trailing space ", "b", ("a", "b")),
]


def lm_eval_loglik(model, examples):
    lm = lm_eval_hf.HFLM(pretrained=hf_view(model), tokenizer=model.tokenizer, batch_size=3, max_length=256)
    reqs = [Instance("loglikelihood", {}, pair, k) for ex in examples for k, pair in enumerate(cloze_pairs(ex))]
    flat = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    out, i = [], 0
    for ex in examples:
        out.append(flat[i : i + len(ex.choices)])
        i += len(ex.choices)
    return out


def test_loglikelihoods_and_choices_match_lm_eval(tiny):
    ours = score_cloze(tiny, EXAMPLES, batch_size=4, max_length=256, progress=False)
    theirs = lm_eval_loglik(tiny, EXAMPLES)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    result = evaluate(
        tiny, EXAMPLES, custom_task(EXAMPLES), protocol="cloze", batch_size=4, max_length=256, progress=False
    )
    for ex, row, lls in zip(EXAMPLES, result.items.itertuples(), theirs, strict=True):
        # lm-eval's process_results: argmax of lls and of lls / len(doc_to_choice) in characters
        assert row.prediction == ex.choices[int(np.argmax(lls))]
        assert (
            row.prediction_norm == ex.choices[int(np.argmax(np.array(lls) / np.array(option_lengths(ex), dtype=float)))]
        )


def test_batch_size_and_edits_keep_scores_consistent(tiny):
    one = score_cloze(tiny, EXAMPLES, batch_size=1, max_length=256, progress=False)
    many = score_cloze(tiny, EXAMPLES, batch_size=8, max_length=256, progress=False)
    np.testing.assert_allclose(np.concatenate(one), np.concatenate(many), atol=1e-4)
