"""The examples of docs/architecture.md run as written (tiny random model)."""

import re
from pathlib import Path

import pytest

from jolalens import edit as edit_module
from jolalens import methods

DOC = Path(__file__).parents[2] / "docs" / "architecture.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_its_examples():
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index, capsys):
    before, specs = dict(edit_module._METHODS), dict(methods.METHODS)
    try:
        exec(compile(BLOCKS[index], f"{DOC.name}[{index}]", "exec"), {"__name__": "doc_example"})
    finally:
        edit_module._METHODS.clear()
        edit_module._METHODS.update(before)
        methods.METHODS.clear()
        methods.METHODS.update(specs)
    out = capsys.readouterr().out
    assert out.strip(), "each example prints its result"
    if index == 1:
        assert "bias_norm" in out and "train_penalty" in out
        assert "an additive bias per head" in out  # registered as a method of jolalens compare
    if index == 2:
        assert out.split() == ["0.25", "0.5"]
