"""The notebooks: built from notebooks/_build_notebooks.py, no library code inline, and (integration)
all three execute in fast mode against a fast precomputed run, on copies: the committed .ipynb
files, whose outputs come from a real run, are never rewritten by the tests."""

import ast
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ALLOWED_IMPORTS = {
    "os",
    "json",
    "pathlib",
    "tempfile",
    "torch",
    "jolalens",
    "plotly",
    "pandas",
    "circuitsvis",
    "transformers",
}
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "notebooks" / "_build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_explore_selected_heads.ipynb",
        "02_jola_vs_ablation.ipynb",
        "03_jola_vs_baselines.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_what_the_builder_writes(path):
    """The cells were not edited by hand (they would be lost at the next build)."""
    built = _builder().NOTEBOOKS[path.name]
    committed = nbformat.read(path, as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in built.cells]
    assert committed.metadata["kernelspec"]["name"] == "jolalens"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_defines_no_library_code(path):
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, ast.FunctionDef | ast.ClassDef), f"{path.name} defines {node.name} inline"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for name in names:
                    assert name.split(".")[0] in ALLOWED_IMPORTS, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_figures_have_a_static_image(path):
    """GitHub, nbviewer and nbconvert ignore plotly's JSON: each figure output must carry a PNG too."""
    book = nbformat.read(path, as_version=4)
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    for output in outputs:
        data = output.get("data", {})
        if PLOTLY_MIME in data:
            assert "image/png" in data, f"{path.name}: a plotly figure without a PNG fallback"
        assert "cdn.plot.ly" not in str(data.get("text/html", "")), (
            f"{path.name}: an HTML output loads plotly.js from a CDN"
        )


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """A fast precomputed run, made by the same script (and code paths) as the real one."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from notebook_runs import main
    finally:
        sys.path.pop(0)
    reuse = os.environ.get("JOLALENS_NOTEBOOK_FAST_RUN")  # a finished `notebook_runs.py --fast --out DIR`
    if reuse:
        assert json.loads((Path(reuse) / "manifest.json").read_text())["fast"], f"{reuse} is not a fast run"
        return Path(reuse)
    out = tmp_path_factory.mktemp("notebook_runs") / "arc_easy"
    assert main(["--fast", "--out", str(out)]) == 0
    return out


@pytest.mark.integration
@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_notebook_executes_in_fast_mode_without_touching_the_committed_file(name, fast_run, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    before = _digest(NOTEBOOKS)
    monkeypatch.setenv("JOLALENS_NOTEBOOK_RUNS", str(fast_run))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copy = tmp_path / name
    shutil.copy(ROOT / "notebooks" / name, copy)
    book = nbformat.read(copy, as_version=4)
    # The timeout catches a hung kernel, not slowness (a loaded 2-core CPU is slow).
    NotebookClient(book, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(book, copy)
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors[0]["evalue"] if errors else ""
    assert any("FAST MODE" in "".join(o.get("text", "")) for o in outputs), "the notebook says it ran in fast mode"
    figures = [o["data"] for o in outputs if PLOTLY_MIME in o.get("data", {})]
    assert figures and all(d.get("image/png", "")[:8] for d in figures), "every figure has a PNG fallback"
    assert _digest(NOTEBOOKS) == before, "the committed notebooks were rewritten"
