"""Evaluation on the tiny random model: log-likelihood scoring, generation, extraction, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from jolalens.data import Example, format_prompt, read_jsonl
from jolalens.edit import Edit, ModuleHook
from jolalens.errors import DataError
from jolalens.evaluate import (
    Protocol,
    evaluate,
    extract_answer,
    first_line,
    labels_named,
    nlg_scores,
    score_choices,
)
from jolalens.hf_view import o_proj_modules

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tasks"

MC = [
    Example("Pick one: the sky is?", "answer2", ("answer1", "answer2")),
    Example("Q: which is bigger, a cat or an elephant?", "answer1", ("answer1", "answer2", "answer3")),
    Example("Short?", "true", ("true", "false")),
    Example("x", "A", ("A", "B", "C", "D")),
    Example("Choose a word.", "yes", ("yes", "no way", "maybe not")),  # choices of unequal length
]


class ShiftEdit(Edit):
    """A trivial edit: adds a constant to every attention head output (o_proj input)."""

    method = "shift"

    def __init__(self, shift: float = 0.5) -> None:
        super().__init__()
        self.shift = shift

    def fwd_hooks(self) -> list[tuple[str, Any]]:
        return []

    def hf_hooks(self, view: nn.Module) -> list[ModuleHook]:
        return [ModuleHook(m, lambda _mod, args: (args[0] + self.shift, *args[1:])) for m in o_proj_modules(view)]

    def config_dict(self) -> dict[str, Any]:
        return {"shift": self.shift}

    @classmethod
    def from_config_dict(cls, model: nn.Module, config: dict[str, Any]) -> ShiftEdit:
        return cls(**config)


def _direct_scores(model: nn.Module, ex: Example) -> list[float]:
    """Independent reference: the TransformerLens model itself, one unpadded sequence per choice."""
    tok = model.tokenizer
    prompt = tok(format_prompt(ex.instruction), add_special_tokens=True).input_ids
    out = []
    for choice in ex.choices or ():
        c = tok(choice, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids, return_type="logits")[0].float(), -1)
        out.append(float(sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(c))))
    return out


def test_loglik_matches_direct_computation(tiny):
    scores = score_choices(tiny, MC, batch_size=3, progress=False)
    for ex, got in zip(MC, scores, strict=True):
        assert got == pytest.approx(_direct_scores(tiny, ex), abs=2e-4)


def test_batching_padding_and_prefix_sharing_do_not_change_scores(tiny):
    ref = score_choices(tiny, MC, batch_size=1, share_prefix=False, progress=False)
    for kwargs in ({"batch_size": 2}, {"batch_size": 16}, {"batch_size": 3, "share_prefix": False}):
        got = score_choices(tiny, MC, progress=False, **kwargs)
        for a, b in zip(got, ref, strict=True):
            assert a == pytest.approx(b, abs=2e-4), kwargs


def test_evaluate_loglik_picks_the_most_probable_choice(tiny):
    res = evaluate(tiny, MC, "arc_easy", progress=False)
    scores = score_choices(tiny, MC, progress=False)
    expected = [ex.choices[max(range(len(s)), key=s.__getitem__)] for ex, s in zip(MC, scores, strict=True)]
    assert res.items["prediction"].tolist() == expected
    assert res.summary["accuracy"] == pytest.approx(
        sum(p == ex.answer for p, ex in zip(expected, MC, strict=True)) / len(MC)
    )
    assert res.summary["n"] == len(MC) and res.summary_frame().shape[0] == 1


def test_edit_changes_scores_and_is_removed(tiny):
    base = score_choices(tiny, MC[:2], progress=False)
    edited = score_choices(tiny, MC[:2], edit=ShiftEdit(0.5), progress=False)
    assert max(abs(a - b) for x, y in zip(base, edited, strict=True) for a, b in zip(x, y, strict=True)) > 1e-3
    after = score_choices(tiny, MC[:2], progress=False)  # hooks gone afterwards
    assert [v for row in after for v in row] == pytest.approx([v for row in base for v in row])
    res = evaluate(tiny, MC[:2], "arc_easy", edit=ShiftEdit(0.5), progress=False)
    assert res.summary["edit"] == "shift"


def test_loglik_refuses_items_without_choices(tiny):
    gen = read_jsonl(FIXTURES / "common_gen.jsonl")
    with pytest.raises(DataError, match="protocol='gen'"):
        evaluate(tiny, gen, "common_gen", protocol="loglik", progress=False)
    with pytest.raises(DataError, match="has no 'choices'"):
        score_choices(tiny, gen, progress=False)


def test_generation_batched_equals_unbatched(tiny):
    items = read_jsonl(FIXTURES / "boolq.jsonl")[:3]
    one = evaluate(
        tiny, items, "boolq", protocol=Protocol.GEN, num_beams=1, batch_size=1, max_new_tokens=6, progress=False
    )
    many = evaluate(
        tiny, items, "boolq", protocol=Protocol.GEN, num_beams=1, batch_size=3, max_new_tokens=6, progress=False
    )
    assert one.items["output"].tolist() == many.items["output"].tolist()
    assert all(len(o) > 0 for o in one.items["output"])
    beam = evaluate(tiny, items, "boolq", protocol="gen", num_beams=4, batch_size=2, max_new_tokens=4, progress=False)
    assert {"output", "prediction", "correct"} <= set(beam.items.columns) and "unparsed" in beam.summary


def test_generation_nlg_metrics(tiny):
    items = read_jsonl(FIXTURES / "common_gen.jsonl")[:2]
    res = evaluate(tiny, items, "common_gen", protocol="gen", num_beams=1, max_new_tokens=5, progress=False)
    assert {"bleu", "rougeL"} <= set(res.summary) and {"bleu", "rougeL"} <= set(res.items.columns)


@pytest.mark.parametrize(
    ("task", "text", "expected"),
    [
        ("arc_easy", "answer2", "answer2"),
        ("arc_easy", "The correct answer is answer3.\nanswer1", "answer3"),
        ("arc_easy", "Answer4", "answer4"),
        ("arc_easy", "answer12", None),  # not a whole word
        ("arc_easy", "\n\nanswer1", "answer1"),
        ("arc_easy", "I think\nanswer1", None),  # only the first line counts
        ("piqa", "solution2 because", "solution2"),
        ("hellaswag", "ending4", "ending4"),
        ("winogrande", "option1", "option1"),
        ("boolq", "True", "true"),  # the released extractor is case-sensitive (B6)
        ("boolq", "FALSE.", "false"),
        ("boolq", "untrue", None),
        ("boolq", "trueness", None),
        ("boolq", "truetrue true", "true"),  # an edit without EOS repeats its answer
        ("piqa", "solution2solution2solution2", "solution2"),
        # a line naming several different labels lists the options: no answer (the released
        # extractor takes the first, which scores "answer1/answer2/answer3/answer4" as answer1)
        ("boolq", "truefalse truefalsefalse", None),
        ("boolq", "Yes, I can answer this question with true or false.", None),
        ("boolq", "The answer is true.", "true"),
        ("arc_easy", "answer1answer3", None),
        ("arc_easy", "answer1/answer2/answer3/answer4", None),
        ("arc_easy", "answer2 answer2", "answer2"),
        ("piqa", "solution2solution2solutio", "solution2"),  # cut short at the token limit
        ("piqa", "solution2solution2solutio.", None),
        ("boolq", "truetruetruefalsefa", None),
        ("winogrande", "option1: option2", None),
        ("piqa", "solution1/solution2 solution2 solution2", None),
        ("arc_easy", "answer12answer1", None),  # "answer12" is still no label
        ("mmlu_math", "Based on the passage, C", None),  # released code scores this as B (B6)
        ("mmlu_math", "B", "B"),
        ("mmlu_math", "(C) 42", "C"),
        ("mmlu_math", "D. because", "D"),
        ("mmlu_math", "The answer is (A)", "A"),
        ("mmlu_math", "answer: B", "B"),
        ("mmlu_math", "A cat sat", None),  # an article, not a letter answer
        ("mmlu_math", "E", None),
        ("xsum", "  A summary.\nmore", "A summary."),
    ],
)
def test_extraction_golden(task, text, expected):
    assert extract_answer(text, task) == expected


def test_labels_named_tells_a_list_from_words():
    assert labels_named("answer1/answer2/answer3/answer4", "arc_easy") == {"answer1", "answer2", "answer3", "answer4"}
    assert labels_named("The answer to this question is yes.", "boolq") == set()
    assert labels_named("truetrue", "boolq") == {"true"}
    assert labels_named("\nanswer5 answer1", "arc_easy", ("answer1", "answer2")) == {"answer1"}
    assert labels_named("B", "mmlu_math") == set()


@pytest.mark.parametrize(
    ("task", "text", "strict", "spaced"),
    [
        ("winogrande", "The correct answer is option 2.", None, "option2"),
        ("winogrande", "The correct answer is option 1: Sarah.", None, "option1"),
        ("siqa", "The answer to this question is answer 3.", None, "answer3"),
        ("hellaswag", "Ending 1: appears and one stands", None, "ending1"),
        ("piqa", "either solution 1 or solution 2", None, None),  # two labels: still no choice
        ("arc_easy", "answer 12 is wrong", None, None),  # "answer 12" is no label either way
        ("arc_easy", "answer 2 or answer2", "answer2", "answer2"),
        ("arc_easy", "answer 1 or answer2", "answer2", None),  # spaced, it names two labels
        ("winogrande", "option2", "option2", "option2"),
        ("boolq", "true 1", "true", "true"),  # only word-and-number labels are joined
    ],
)
def test_spaced_labels_are_read_only_when_asked(task, text, strict, spaced):
    assert extract_answer(text, task) == strict, "the protocol's reading (the paper's) is strict"
    assert extract_answer(text, task, spaced_labels=True) == spaced


def test_extraction_uses_item_choices():
    assert extract_answer("answer5", "arc_easy", ("answer1", "answer2", "answer3")) is None
    assert first_line("\n  hello \nworld") == "hello"


def test_nlg_scores_golden():
    corpus, sent, rouge = nlg_scores(
        ["the cat sat on the mat today", "a b"], [["the cat sat on the mat today"], ["x y", "a b"]]
    )
    assert sent[0] == pytest.approx(100.0) and rouge == pytest.approx([100.0, 100.0])
    assert corpus == pytest.approx(100.0)  # every hypothesis matches one of its references
    _, _, rouge2 = nlg_scores(["completely different words"], [["the cat sat"]])
    assert rouge2 == [0.0]


def test_nlg_scores_leave_the_root_logger_alone():
    import logging

    root = logging.getLogger()
    saved = root.handlers[:]  # pytest's capture handlers: without them a stray basicConfig() would show
    root.handlers.clear()
    try:
        nlg_scores(["the cats sat"], [["the cat sat"]])  # rouge-score's default tokenizer logs through absl
        added = root.handlers[:]
    finally:
        root.handlers[:] = saved
    assert added == [], "a handler on the root logger doubles every log line of the caller"
