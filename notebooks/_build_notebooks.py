"""Write the jolalens notebooks from the cells below; ``--execute`` runs them and saves outputs.

Run from the repository root: ``python notebooks/_build_notebooks.py --execute`` (the larger,
demo-sized budget; several minutes each on a 2-core CPU), or with ``JOLALENS_NOTEBOOK_FAST=1``
for the fast mode the test suite uses (and the committed outputs come from). Name notebooks
to build only those: ``python notebooks/_build_notebooks.py --execute 03``.
"""
import sys

import nbformat as nbf

SETUP = '''import os

import torch

import jolalens
from jolalens.tasks import load_task_splits

# JOLALENS_NOTEBOOK_FAST=1 (set by the test suite) shrinks every budget so the notebook runs in
# about a minute. The committed outputs come from that fast mode
# (`JOLALENS_NOTEBOOK_FAST=1 python notebooks/_build_notebooks.py --execute`); unset it for the larger budget.
FAST = os.environ.get("JOLALENS_NOTEBOOK_FAST") == "1"
BUDGET = dict(n_train=16, n_valid=8, epochs=1, n_eval=4) if FAST else dict(n_train=64, n_valid=32, epochs=3, n_eval=24)
TASK = "arc_easy"
torch.manual_seed(0)
BUDGET'''

TRAIN = '''model = jolalens.load_model()  # SmolLM2-135M-Instruct, offline
splits = load_task_splits(TASK, n_train=BUDGET["n_train"], n_valid=BUDGET["n_valid"], n_test=0, seed=42)
config = jolalens.TrainConfig(epochs=BUDGET["epochs"], lr=2e-2, warmup_steps=2, patience=BUDGET["epochs"], progress=False)
result = jolalens.train_jola(model, splits.train, splits.valid, config=config)
edit = result.edit
result.summary()'''


def nb(cells):
    book = nbf.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    return book


explore = nb([
    "md:# Which heads does JoLA edit, and what do they do?\n\nTrain (or load) a JoLA edit on the embedded SmolLM2-135M-Instruct, list the heads whose gates stay open, look at what the strongest one attends to, and measure how much each head's edit moves the answer. Everything used here is importable from `jolalens`; the budget is small so the notebook runs on a laptop CPU (the paper's protocol is `jolalens.train_jola(model, train, valid)` with 200/200 examples and 20 epochs).",
    SETUP,
    "md:## Train a JoLA edit\n\nTo inspect a saved run instead: `edit = jolalens.load_edit('runs/arc_easy/edit', model)`.",
    TRAIN,
    "result.history[[\"epoch\", \"train_ce\", \"val_ce\", \"open_frac_additive\", \"open_frac_multiplicative\"]]",
    "md:## The selected heads\n\nA head is edited at evaluation when its deterministic gate is above 0; `gate` is that value, `p_open` the probability that the training-time gate is non-zero, `norm` the length of the edit vector.",
    "heads = jolalens.selected_heads(edit)\nprint(edit)\nheads.head(10)",
    "from jolalens.analysis import head_heatmap\n\nmaps = edit.head_maps()\nhead_heatmap(maps[\"gate_additive\"], title=\"additive gate per head\", colorbar_title=\"g_a\")",
    "head_heatmap(maps[\"norm_additive\"] * maps[\"gate_additive\"], title=\"effective additive edit |g_a * a|\", colorbar_title=\"norm\")",
    "md:## What does the strongest head attend to?\n\nThe attention pattern comes from the TransformerLens bridge (`hook_pattern`, `[batch, head, query, key]`); the prompt is the first validation item.",
    "import plotly.express as px\n\nlayer, head = int(heads.iloc[0][\"layer\"]), int(heads.iloc[0][\"head\"])\nexample = splits.valid[0]\nprompt = jolalens.data.format_prompt(example.instruction)\ntokens = model.tokenizer(prompt, return_tensors=\"pt\").input_ids\nwith torch.no_grad():\n    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == f\"blocks.{layer}.attn.hook_pattern\")\npattern = cache[f\"blocks.{layer}.attn.hook_pattern\"][0, head]\nlabels = [model.tokenizer.decode([t]) for t in tokens[0]]\nlast = pattern[-1]\ntop = last.topk(8)\nprint(f\"L{layer}H{head}: from the last prompt token, the most attended tokens:\")\nfor w, k in zip(top.values.tolist(), top.indices.tolist(), strict=True):\n    print(f\"  {w:.3f}  position {k:3d}  {labels[k]!r}\")",
    "window = slice(max(0, len(labels) - 40), len(labels))\npx.imshow(pattern[window, window].numpy(), x=labels[window], y=labels[window], color_continuous_scale=\"Blues\",\n          title=f\"L{layer}H{head} attention over the last 40 prompt tokens\", labels={\"x\": \"key\", \"y\": \"query\", \"color\": \"weight\"})",
    "md:## How much does each head's edit move the answer?\n\nSwitch one head's edit off (its gate closed), keep the others, and re-score the mean log-probability of the reference answer on validation items.",
    "from jolalens.analysis import edit_head_effects\n\neffects = edit_head_effects(model, edit, splits.valid[: BUDGET[\"n_eval\"]], top_k=5 if FAST else 10)\neffects",
])

versus = nb([
    "md:# JoLA's heads against ablation-based localization\n\nDo the heads that JoLA chooses to edit matter to the base model? Score every head by how much mean-ablating its `hook_z` output lowers the answer log-probability (and by attribution patching, a one-pass estimate), then compare the rankings: overlap, Jaccard, Spearman, AUROC and a permutation test against random head sets.",
    SETUP,
    TRAIN,
    "md:True ablation runs every layer once per batch with all its heads ablated side by side (the batch is repeated per head): on this CPU that is minutes for a handful of items, so the fast mode (used by the tests) keeps only the attribution estimate and compares JoLA with it.",
    "from jolalens.analysis import ablation_scores, attribution_scores\n\nitems = splits.valid[: BUDGET[\"n_eval\"]]\nattribution = attribution_scores(model, items, ablation=\"mean\", reference=splits.train)\nablation = attribution if FAST else ablation_scores(model, items[:8], ablation=\"mean\", reference=splits.train)\nattribution.to_frame().sort_values(\"logprob_drop\", ascending=False).head(10)",
    "md:How well does the one-pass attribution estimate track true ablation here?",
    "from jolalens.analysis import spearman\n\nif FAST:\n    print(\"fast mode: no true ablation was run\")\nelse:\n    print(f\"Spearman(attribution, ablation) over {ablation.logprob_drop.numel()} heads: {spearman(attribution.logprob_drop, ablation.logprob_drop):.3f}\")",
    "md:## Agreement between JoLA's gates and ablation importance",
    "from jolalens.analysis import compare_selection, layer_distribution\n\nmaps = edit.head_maps()\ngates = torch.maximum(maps[\"gate_additive\"], maps[\"gate_multiplicative\"])\nn_open = int((gates > 0).sum())\nk = n_open if 0 < n_open < gates.numel() else 20\ncompare_selection(gates, ablation.logprob_drop, k=k)",
    "layer_distribution(gates > 0, n_layers=gates.shape[0]) if 0 < n_open else 'no open gates'",
    "from jolalens.analysis import side_by_side\n\nside_by_side({\"JoLA gate (max of types)\": gates, \"mean-ablation drop\": ablation.logprob_drop, \"attribution estimate\": attribution.logprob_drop},\n             title=f\"{TASK}: JoLA selection beside ablation importance\")",
])

baselines = nb([
    "md:# JoLA against the baselines, and where each one edits\n\nRun `jolalens.compare` (the code behind `jolalens compare`) for JoLA, ITI, RED, LoFiT, LoRA, BitFit and zero-shot on one task, then ask the interpretability question: do the head-level methods (JoLA's gates, ITI's probes, LoFiT's scales) pick the same heads? Set `JOLALENS_COMPARE_DIR` to a finished comparison directory (e.g. one from `benchmarks/compare_embedded.py`) to read it instead of running a small one here.",
    SETUP.replace("from jolalens.tasks import load_task_splits\n", ""),
    "import tempfile\nfrom pathlib import Path\n\nfrom jolalens.compare import CompareConfig, run_compare, summarise\n\nmodel = jolalens.load_model()\nsizes = dict(n_train=16, n_valid=8, n_test=16, epochs=1) if FAST else dict(n_train=64, n_valid=32, n_test=100, epochs=3)\nout = Path(os.environ.get(\"JOLALENS_COMPARE_DIR\") or tempfile.mkdtemp(prefix=\"jolalens-compare-\"))\nconfig = CompareConfig(\n    methods=(\"jola\", \"iti\", \"red\", \"lofit\", \"lora\", \"bitfit\", \"zeroshot\"), tasks=(TASK,), seeds=(0,),\n    n_train=sizes[\"n_train\"], n_valid=sizes[\"n_valid\"], n_test=sizes[\"n_test\"], budget=1,\n    train=jolalens.TrainConfig(epochs=sizes[\"epochs\"], warmup_steps=2, progress=False),\n)\nif \"JOLALENS_COMPARE_DIR\" in os.environ:\n    from jolalens.compare import collect\n    results = collect(out)\nelse:\n    results = run_compare(model, config, out, log=lambda line: None)\nresults[[\"task\", \"method\", \"seed\", \"score\", \"val_ce\", \"trainable_parameters\", \"fit_seconds\", \"hyperparameters\"]]",
    "md:## Test accuracy per method\n\nThe dashed line is zero-shot. With budgets this small, differences of a few points are noise: the test subset is tiny and each method saw one hyper-parameter point. `benchmarks/RESULTS.md` has the real runs.",
    "from jolalens.analysis import method_bar\n\nsummary = summarise(results)\nzero = float(summary.loc[summary[\"method\"] == \"zeroshot\", \"mean\"].iloc[0])\nmethod_bar(summary, x=\"method\", y=\"mean\", title=f\"{TASK}: test accuracy\", reference=zero)",
    "md:## Which heads do the head-level methods pick?\n\nJoLA ranks heads by the size of its effective edit `|g_a a| + |g_m m|` (an open gate with a tiny vector is not a real selection), ITI by its probes' validation accuracy, LoFiT keeps the heads with the largest stage-1 scales. We compare the top-K of each, with K = LoFiT's K.",
    "from jolalens.analysis import (\n    jaccard_matrix,\n    layer_distribution,\n    side_by_side,\n    similarity_matrix,\n    top_k,\n)\n\nrun = lambda method: out / \"runs\" / TASK / method / \"seed0\" / \"edit\"  # noqa: E731\njola, iti, lofit = (jolalens.load_edit(run(m), model) for m in (\"jola\", \"iti\", \"lofit\"))\nmaps = jola.head_maps()\njola_effect = maps[\"gate_additive\"] * maps[\"norm_additive\"] + maps[\"gate_multiplicative\"] * maps[\"norm_multiplicative\"]\nk = len(lofit.config.heads)\nlofit_map = torch.zeros_like(jola_effect)\nfor layer, head in lofit.config.heads:\n    lofit_map[layer, head] = 1.0\nselections = {\"JoLA\": top_k(jola_effect, k), \"ITI\": top_k(iti.probe_accuracy, k), \"LoFiT\": set(lofit.config.heads)}\nprint(f\"K = {k} of {jola_effect.numel()} heads\")\njaccard_matrix(selections)",
    "similarity_matrix(jaccard_matrix(selections), title=f\"Top-{k} head sets, Jaccard\")",
    "side_by_side({\"JoLA |edit|\": jola_effect, \"ITI probe accuracy\": iti.probe_accuracy, \"LoFiT heads\": lofit_map}, title=\"Where each method edits\")",
    "import pandas as pd\n\nn_layers, n_heads = jola_effect.shape\npd.DataFrame({name: layer_distribution(sel, n_layers, n_heads)[\"n_selected\"] for name, sel in selections.items()})",
    "md:Random top-K sets of K heads out of N overlap in K^2/N heads on average, a Jaccard of about K/(2N - K); `jolalens.analysis.compare_selection` adds a permutation p-value when one side is a full score map. RED (MLP outputs), LoRA and BitFit (weights) have no head-level selection to compare.",
])

PATHS = {
    "notebooks/01_explore_selected_heads.ipynb": explore,
    "notebooks/02_jola_vs_ablation.ipynb": versus,
    "notebooks/03_jola_vs_baselines.ipynb": baselines,
}
only = [a for a in sys.argv[1:] if not a.startswith("--")]  # e.g. `03` builds only notebook 03
for path, book in PATHS.items():
    if only and not any(o in path for o in only):
        continue
    if "--execute" in sys.argv:
        from nbclient import NotebookClient

        NotebookClient(book, timeout=3600, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
    nbf.write(book, path)
    print("wrote", path)
