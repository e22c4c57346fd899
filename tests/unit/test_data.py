"""JSONL examples: line-numbered errors, prompts, sampling."""

import pytest

from jolalens import DataError, Example, read_jsonl, write_jsonl
from jolalens.data import ALPACA_TEMPLATE, format_prompt, sample_examples


def test_round_trip(tmp_path):
    exs = [Example("q1", "a1"), Example("q2", "answer2", choices=("answer1", "answer2"))]
    path = write_jsonl(exs, tmp_path / "d.jsonl")
    assert read_jsonl(path) == exs


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", "invalid JSON"),
        ('{"instruction": "x"}', r"missing field\(s\) \['answer'\]"),
        ('{"instruction": "x", "answer": ""}', "non-empty string"),
        ('{"instruction": "x", "answer": "c", "choices": ["a", "b"]}', "not one of choices"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok", "answer": "fine"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=match) as err:
        read_jsonl(path)
    assert f"{path}:3" in str(err.value)


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        read_jsonl(tmp_path / "e.jsonl")


def test_alpaca_prompt():
    prompt = format_prompt("Do X")
    assert prompt == ALPACA_TEMPLATE.format(instruction="Do X")
    assert prompt.endswith("### Response:\n") and "\n### Instruction:\nDo X\n\n" in prompt


def test_sampling_is_seeded_and_independent_of_global_rng():
    import random

    exs = [Example(str(i), str(i)) for i in range(50)]
    random.seed(1)
    a = sample_examples(exs, 10, seed=3)
    random.seed(2)
    b = sample_examples(exs, 10, seed=3)
    assert a == b and len(set(e.answer for e in a)) == 10
    assert sample_examples(exs, None, seed=0) == exs
