"""Write the jolalens notebooks from the cells below; ``--execute`` runs them and saves outputs.

The notebooks *load* precomputed real runs (``runs/notebooks/<task>/``, made by
``python benchmarks/notebook_runs.py``) and compute only what takes seconds. Run from the
repository root::

    python benchmarks/notebook_runs.py --budget modest   # the runs (see docs/notebooks.md for times)
    python notebooks/_build_notebooks.py --execute        # execute all three, outputs saved in place
    python notebooks/_build_notebooks.py --execute 02     # only notebook 02

``--out DIR`` writes the notebooks elsewhere (the tests execute copies in fast mode there and
never touch the committed files). ``JOLALENS_NOTEBOOK_RUNS`` points the notebooks at another run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nbformat as nbf

# In SETUP, a backslash at the end of a line joins it to the next: the cell itself has one long line there.
SETUP = """import json
import os
from pathlib import Path

import pandas as pd
import plotly.io as pio
import torch
import transformers

import jolalens
from jolalens.tasks import load_task_splits

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in the saved outputs

# Every figure is stored twice: interactive (plotly JSON, for JupyterLab) and as a PNG, the
# static fallback GitHub, nbviewer and `jupyter nbconvert --to html` show (no kernel, no CDN).
pio.renderers.default = "plotly_mimetype+png"
pio.renderers["png"].width, pio.renderers["png"].height = None, None  # each figure's own size

# The precomputed run this notebook reads (see docs/notebooks.md); the tests point it at a fast one.
RUN = Path(os.environ.get("JOLALENS_NOTEBOOK_RUNS", "../runs/notebooks/arc_easy"))
if not (RUN / "manifest.json").is_file():
    raise FileNotFoundError(f"{RUN.resolve()} holds no run: make it with \
`python benchmarks/notebook_runs.py --budget modest` from the repository root")
MANIFEST = json.loads((RUN / "manifest.json").read_text())
TASK, BUDGET, PROTOCOL = MANIFEST["task"], MANIFEST["budget"], MANIFEST["protocol"]
STYLE = "cloze" if PROTOCOL == "cloze" else "alpaca"  # the prompt format the run trained and scored with
print(f"run: {MANIFEST['command']}\\nbudget: {MANIFEST['budget_name']}, \
machine: {MANIFEST['machine']}, protocol: {MANIFEST['protocol']}")
if MANIFEST["fast"]:
    print("FAST MODE: tiny budgets that exercise the code; these numbers and figures show nothing")"""

LOAD = """model = jolalens.load_model()  # SmolLM2-135M-Instruct, offline
edit = jolalens.load_edit(RUN / "jola" / "edit", model)
history = pd.read_csv(RUN / "jola" / "history.csv")
gate_history = torch.load(RUN / "jola" / "gate_history.pt", weights_only=True)  # entry 0: the initial gates
splits = load_task_splits(TASK, n_train=BUDGET["n_train"], n_valid=BUDGET["n_valid"], n_test=BUDGET["n_test"], seed=42,
                          protocol=PROTOCOL)
print(edit)
MANIFEST.get("train", "the manifest has no training summary")"""


def nb(cells: list[str]) -> nbf.NotebookNode:
    book = nbf.v4.new_notebook()
    # the kernel `make lab` registers (this project's .venv); the tests and --execute name their own
    book.metadata["kernelspec"] = {"name": "jolalens", "display_name": "Python (jolalens)", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    book.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    return book


explore = nb(
    [
        "md:# Which heads does JoLA edit, and what do they do?\n\n"
        "A JoLA edit trained on the embedded SmolLM2-135M-Instruct (ARC-e; the run and its budget are printed below, "
        "made by `benchmarks/notebook_runs.py`): which heads' gates stay open, how the selection formed over training "
        "(from the initial gates, epoch 0), what the edit does to the answer's log-probability, head by head, and what "
        "the most effective selected head attends to. Figures are interactive in JupyterLab and stored as PNG for "
        "static viewers.",
        SETUP,
        LOAD,
        "md:## Training: losses and the fraction of gates open",
        'from jolalens.analysis import training_curves\n\ntraining_curves(history, title=f"{TASK}: JoLA training")',
        "md:## The selected heads\n\n"
        "A head is edited at evaluation when its deterministic gate is above 0. `gate` is that value, `p_open` the "
        "probability that the training-time (stochastic) gate is non-zero, `norm` the length of the edit vector. Gate "
        "maps use a fixed [0, 1] colour scale, so white is a closed gate in every run.",
        'heads = jolalens.selected_heads(edit)\nprint(f"{len(heads)} (head, type) edits open of {2 * '
        'edit.dims.n_layers * edit.dims.n_heads}")\nheads.head(10)',
        "from jolalens.analysis import gate_heatmap, head_heatmap, side_by_side\n\nmaps = edit.head_maps()\n"
        'side_by_side({"additive gate": maps["gate_additive"], "multiplicative gate": maps["gate_multiplicative"]},\n'
        '             ranges={"additive gate": (0, 1), "multiplicative gate": (0, 1)}, title=f"{TASK}: JoLA gates at '
        'evaluation")',
        'gate_heatmap(maps["p_open_additive"], title="P(gate open), additive: the training-time gate")',
        'head_heatmap(maps["norm_additive"] * maps["gate_additive"], title="effective additive edit |g_a a|", '
        'colorbar_title="L2 norm")',
        "md:## How the selected set changes over training\n\n"
        "Epoch 0 is the initial state (every gate open). `jaccard_to_final` compares each epoch's open heads with the "
        "final epoch's.",
        "from jolalens.analysis import gate_dynamics, selection_dynamics, selection_over_training\n\n"
        'selection = selection_over_training(gate_history, key="gate_additive")\nselection',
        'selection_dynamics(selection, title="additive gates: open heads over training")',
        'gate_dynamics(gate_history, key="p_open_additive", title="P(gate open) of the heads still open at the end")',
        "md:## What the edit does to the answer's log-probability\n\n"
        "Mean log-probability of the reference answer on test items, base model against the edited one; then each "
        "selected head's edit switched off alone (the rest kept).",
        "from jolalens.analysis import answer_logprobs, edit_head_effects\n\n"
        'items = splits.test[: 8 if MANIFEST["fast"] else 32]\n'
        "base = answer_logprobs(model, items, style=STYLE)\n"
        "edited = answer_logprobs(model, items, edit=edit, style=STYLE)\n"
        'print(f"{len(items)} test items: mean answer log-prob {base.mean():.3f} (base) '
        '-> {edited.mean():.3f} (JoLA), "\n'
        '      f"raised on {int((edited > base).sum())} of {len(items)}")',
        'effects = edit_head_effects(model, edit, items, top_k=3 if MANIFEST["fast"] else 8, style=STYLE)\neffects',
        "md:## What does the most effective selected head attend to?\n\n"
        "The selected head whose edit moves the answer most (top row above), on a real test prompt. The pattern comes "
        "from the TransformerLens bridge (`hook_pattern`, `[batch, head, query, key]`). `circuitsvis` draws it "
        "interactively (its JavaScript is inline; it needs a live notebook); the plotly heatmap below it is the static "
        "fallback.",
        'import circuitsvis\n\nlayer, head = int(effects.iloc[0]["layer"]), int(effects.iloc[0]["head"])\n'
        "prompt = jolalens.data.format_prompt(items[0].instruction, STYLE)\n"
        'tokens = model.tokenizer(prompt, return_tensors="pt").input_ids\n'
        'name = f"blocks.{layer}.attn.hook_pattern"\nwith torch.no_grad():\n'
        "    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name)\n"
        "pattern = cache[name][0, head]\nlabels = [model.tokenizer.decode([t]) for t in tokens[0]]\n"
        "window = slice(max(0, len(labels) - 40), len(labels))\n"
        'print(f"L{layer}H{head}, answer: {items[0].answer!r}")\n'
        "circuitsvis.attention.attention_patterns(tokens=labels[window], attention=pattern[None, window, window])",
        "import plotly.express as px\n\n"
        "px.imshow(pattern[window, window].numpy(), x=list(range(window.start, len(labels))), "
        "y=list(range(window.start, len(labels))),\n"
        '          color_continuous_scale="Reds", zmin=0, zmax=1, labels={"x": "key position", "y": "query position", '
        '"color": "attention"},\n'
        '          title=f"L{layer}H{head}: attention over the last {window.stop - window.start} prompt tokens", '
        "width=720, height=640)",
        'top = pattern[-1].topk(8)\npd.DataFrame({"position": top.indices.tolist(), "token": [labels[k] for k in '
        "top.indices.tolist()],\n"
        '              "attention from the last token": top.values.tolist()})',
    ]
)

versus = nb(
    [
        "md:# JoLA's heads against ablation-based localization\n\n"
        "Do the heads JoLA edits matter to the base model? Each head is scored by how much mean-ablating its `hook_z` "
        "output lowers the answer log-probability (true ablation, one forward per head) and by attribution patching (a "
        "one-pass first-order estimate); both were computed by `benchmarks/notebook_runs.py` on the same validation "
        "items and are loaded here.",
        SETUP,
        LOAD,
        "from jolalens.analysis import HeadScores, spearman\n\n"
        'ablation = HeadScores.load(RUN / "jola" / "ablation" / "mean.pt")\n'
        'attribution = HeadScores.load(RUN / "jola" / "ablation" / "attribution.pt")\n'
        'print(f"true mean-ablation on {ablation.n_examples} items; attribution on {attribution.n_examples}")\n'
        'print(f"Spearman(attribution, ablation) over {ablation.logprob_drop.numel()} heads: '
        '{spearman(attribution.logprob_drop, ablation.logprob_drop):.3f}")\n'
        'ablation.to_frame().sort_values("logprob_drop", ascending=False).head(10)',
        "md:## Agreement between JoLA's gates and ablation importance\n\n"
        "The selection is the heads with an open gate of either type; it is compared with the same number of most "
        "important heads. `p_permutation` asks how often random head sets of that size overlap as much.",
        "from jolalens.analysis import compare_selection, layer_distribution\n\nmaps = edit.head_maps()\n"
        'gates = torch.maximum(maps["gate_additive"], maps["gate_multiplicative"])\nn_open = int((gates > 0).sum())\n'
        'print(f"{n_open} of {gates.numel()} heads have an open gate")\n'
        'rows = [compare_selection(gates, scores.logprob_drop).assign(scores=name) for name, scores in (("ablation", '
        'ablation), ("attribution", attribution))] if 0 < n_open < gates.numel() else []\n'
        'pd.concat(rows, ignore_index=True) if rows else "no contrast: every gate (or none) is open"',
        "layer_distribution(gates > 0, n_layers=gates.shape[0], n_heads=gates.shape[1])",
        "md:Gates on [0, 1]; the log-prob drops are signed (ablating a head can help), so they diverge around 0: red = "
        "the head helps the answer, blue = it hurts.",
        "from jolalens.analysis import side_by_side\n\n"
        'side_by_side({"JoLA gate (max of types)": gates, "true mean-ablation drop": ablation.logprob_drop, '
        '"attribution estimate": attribution.logprob_drop},\n'
        '             ranges={"JoLA gate (max of types)": (0, 1)}, title=f"{TASK}: JoLA\'s selection beside ablation '
        'importance")',
    ]
)

baselines = nb(
    [
        "md:# JoLA against the baselines, and where each one edits\n\n"
        "Test accuracy of JoLA, ITI, RED, LoFiT, LoRA, BitFit and zero-shot on hundreds of test items, read from a "
        "finished `jolalens compare` directory (the one `benchmarks/notebook_runs.py` ran or was given; its sizes are "
        "printed below), then the "
        "interpretability question: do the head-level methods (JoLA's gates, ITI's probes, LoFiT's scales) pick the "
        "same heads?",
        SETUP.replace("import torch\n", "").replace("from jolalens.tasks import load_task_splits\n", ""),
        "from jolalens.compare import collect, summarise\n"
        "from jolalens.methods import default_methods\n\n"
        "METHODS = list(default_methods())  # the method registry's default comparison\n"
        'compare_dir = Path(MANIFEST["compare_dir"])\nresults = collect(compare_dir)\n'
        'results = results[(results["task"] == TASK) & results["method"].isin(METHODS) & (results["seed"] == 0)]\n'
        'print(f"{os.path.relpath(compare_dir, Path.cwd().parent)}: {len(results)} runs")\n'
        'results[["method", "score", "n_test", "val_ce", "trainable_parameters", '
        '"hyperparameters"]].set_index("method").loc[METHODS]',
        "md:## Test accuracy per method\n\n"
        "The dashed line is zero-shot. On ARC-e a 4-way chance level is 0.25; with n test items, the standard error of "
        "an accuracy near 0.3 is about sqrt(0.3 * 0.7 / n).",
        "from jolalens.analysis import method_bar\n\n"
        'summary = summarise(results).set_index("method").loc[METHODS].reset_index()\n'
        'n_test = int(results["n_test"].min())\n'
        'zero = float(summary.loc[summary["method"] == "zeroshot", "mean"].iloc[0])\n'
        'metric = results["metric"].iloc[0]  # acc_norm under the cloze protocol\n'
        'method_bar(summary, x="method", y="mean", y_title=f"test {metric}", reference=zero, '
        'reference_label="zero-shot",\n'
        '           title=f"{TASK}: test {metric} on {n_test} items (seed 0)")',
        "md:This notebook's own run (`runs/notebooks`, the budget printed above) scored JoLA and zero-shot on its test "
        "items too:",
        'scored = RUN / "eval" / "summary.json"\n'
        'columns = ["n", "accuracy", "acc_norm", "protocol"]\n'
        "pd.DataFrame(json.loads(scored.read_text())).T.filter(columns) if scored.is_file() "
        'else "not scored yet: run benchmarks/notebook_runs.py --steps eval"',
        "md:## Which heads do the head-level methods pick?\n\n"
        "JoLA ranks heads by the size of its effective edit `|g_a a| + |g_m m|`, ITI by its probes' validation "
        "accuracy (scaled from chance, 0.5, to 1), LoFiT keeps the heads with the largest stage-1 scales. We compare "
        "the top-K of each, with K = LoFiT's K.",
        "from jolalens.analysis import (\n    MAP_RANGES,\n    head_level_maps,\n    jaccard_matrix,\n"
        "    side_by_side,\n    similarity_matrix,\n    top_k,\n)\n\n"
        "model = jolalens.load_model()\nmaps = head_level_maps(compare_dir, TASK, model)\n"
        'k = int(maps["LoFiT heads"].sum())\n'
        'selections = {"JoLA": top_k(maps["JoLA |edit|"], k), "ITI": top_k(maps["ITI probe accuracy"], k), "LoFiT": '
        'top_k(maps["LoFiT heads"], k)}\n'
        "print(f\"K = {k} of {maps['JoLA |edit|'].numel()} heads; "
        "random sets of K share about {k * k / maps['JoLA |edit|'].numel():.1f} heads\")\n"
        "jaccard_matrix(selections)",
        'similarity_matrix(jaccard_matrix(selections), title=f"Top-{k} head sets, Jaccard")',
        'side_by_side(maps, ranges={name: r for name, r in MAP_RANGES.items() if name in maps}, title=f"{TASK}: where '
        'each method edits")',
        'from jolalens.analysis import layer_distribution\n\nn_layers, n_heads = maps["JoLA |edit|"].shape\n'
        'pd.DataFrame({name: layer_distribution(sel, n_layers, n_heads)["n_selected"] for name, sel in '
        "selections.items()})",
        "md:RED (MLP outputs), LoRA and BitFit (weights) have no head-level selection to compare.",
    ]
)

NOTEBOOKS = {
    "01_explore_selected_heads.ipynb": explore,
    "02_jola_vs_ablation.ipynb": versus,
    "03_jola_vs_baselines.ipynb": baselines,
}


def build(
    names: list[str] | None = None,
    *,
    out: Path = Path("notebooks"),
    execute: bool = False,
    kernel: str = "python3",
    timeout: int = 3600,
) -> list[Path]:
    """Write (and optionally execute) the notebooks into ``out``; returns their paths."""
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for name, book in NOTEBOOKS.items():
        if names and not any(n in name for n in names):
            continue
        book = nbf.from_dict(book)  # a copy: the module-level notebooks stay unexecuted
        if execute:
            from nbclient import NotebookClient

            NotebookClient(
                book, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(out)}}
            ).execute()
        path = out / name
        nbf.write(book, path)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="e.g. 03: build only notebooks whose name contains it")
    parser.add_argument("--execute", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("notebooks"))
    parser.add_argument("--kernel", default="python3")
    args = parser.parse_args()
    if (
        args.execute
        and "JOLALENS_NOTEBOOK_RUNS" not in os.environ
        and args.out.resolve() != Path("notebooks").resolve()
    ):
        os.environ["JOLALENS_NOTEBOOK_RUNS"] = str(Path("runs/notebooks/arc_easy").resolve())
    for path in build(args.names, out=args.out, execute=args.execute, kernel=args.kernel):
        print("wrote", path)  # noqa: T201


if __name__ == "__main__":
    main()
