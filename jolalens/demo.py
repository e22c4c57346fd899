"""``make demo``: JoLA on one commonsense task with the embedded model, scored as a cloze task.

Under the paper's label format ("Answer format: answer1/answer2") SmolLM2-135M sits at
chance, so the demo uses the cloze protocol (lm-evaluation-harness's multiple-choice
scoring, :mod:`jolalens.cloze`), where the model is above chance and an edit can show. The
budget is small so that it finishes in minutes on a 2-core CPU; the task and budget were
chosen on validation data only (``benchmarks/demo_choice.py``; see ``docs/cloze.md``). It
prints zero-shot and JoLA ``acc_norm`` and ``acc`` on fixed test items with Wilson 95%
intervals and the exact McNemar p of the paired difference, and says so when there is none.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .analysis.paired import mcnemar_exact
from .analysis.stats import length_prior_accuracy
from .data import PromptStyle
from .evaluate import EvalResult, Protocol, evaluate
from .jola import JolaConfig, selected_heads
from .models import load_model, model_dims
from .tasks import get_task, load_task_splits
from .train import SparsityConfig, TrainConfig, train_jola

__all__ = ["DemoBudget", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoBudget:
    """How much work the demo does (the paper: 200/200 examples, 20 epochs, the full test split)."""

    task: str = "arc_easy"
    n_train: int = 200
    n_valid: int = 50
    n_test: int = 500
    epochs: int = 4
    lr: float = 2e-2
    warmup_steps: int = 2
    lam: float = SparsityConfig().lam
    gate_lr_scale: float = TrainConfig().gate_lr_scale
    seed: int = 42
    alpha: float = 0.05  # significance level the verdict uses
    # recompute layer activations in the backward: keeps the demo under 2 GB resident (same results)
    checkpoint_activations: bool = True

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_valid, self.n_test, self.epochs) < 1 or not 0 < self.alpha < 1:
            raise ValueError("n_train, n_valid, n_test and epochs must be >= 1 and 0 < alpha < 1")

    def train_config(self, *, epochs: int | None = None, progress: bool = True) -> TrainConfig:
        """The demo's training recipe (cloze targets, no early stop before the last epoch)."""
        epochs = self.epochs if epochs is None else epochs
        return TrainConfig(
            lr=self.lr,
            epochs=epochs,
            warmup_steps=self.warmup_steps,
            seed=self.seed,
            gate_lr_scale=self.gate_lr_scale,
            patience=epochs,
            prompt_style=PromptStyle.CLOZE,
            progress=progress,
            checkpoint_activations=self.checkpoint_activations,
        )


def _line(name: str, res: EvalResult, key: str, ci: str) -> str:
    lo, hi = res.summary[ci]
    return f"  {name:<10} {res.summary[key]:6.1%}  [{lo:.1%}, {hi:.1%}]"


def run_demo(
    model_name: str = "smollm2-135m-instruct",
    budget: DemoBudget | None = None,
    figures_dir: str | Path | None = "runs/demo/figures",
    run_dir: str | Path | None = "runs/demo",
    load_options: dict[str, Any] | None = None,
) -> int:
    budget = budget or DemoBudget()
    start = time.perf_counter()
    print(f"Loading {model_name} (offline) ...")
    model = load_model(model_name, **(load_options or {}))
    dims = model_dims(model)
    print(
        f"{model.cfg.model_name}: {dims.n_layers} layers x {dims.n_heads} query heads "
        f"({dims.n_kv_heads} KV heads), d_head={dims.d_head}: {dims.n_head_slots} heads JoLA may edit"
    )
    task = get_task(budget.task)
    splits = load_task_splits(
        task.name,
        n_train=budget.n_train,
        n_valid=budget.n_valid,
        n_test=budget.n_test,
        seed=budget.seed,
        protocol="cloze",
    )
    print(
        f"\nTask {task.name}, cloze protocol (lm-evaluation-harness's scoring of the option texts): "
        f"{len(splits.train)} train / {len(splits.valid)} valid / {len(splits.test)} test items.\n"
        f"Small demo budget (paper: 200/200, 20 epochs, lr 5e-3, 50 warm-up steps): "
        f"{budget.epochs} epochs, lr {budget.lr}, {budget.warmup_steps} warm-up steps.\n"
    )
    before = evaluate(model, splits.test, task, protocol=Protocol.CLOZE, progress=True)
    result = train_jola(
        model,
        splits.train,
        splits.valid,
        jola=JolaConfig(seed=budget.seed),
        config=budget.train_config(),
        sparsity=SparsityConfig(lam=budget.lam),
    )
    after = evaluate(model, splits.test, task, edit=result.edit, protocol=Protocol.CLOZE, progress=True)
    print(
        "\n"
        + result.history[["epoch", "train_ce", "val_ce", "open_frac_additive", "open_frac_multiplicative"]].to_string(
            index=False
        )
    )
    n = len(splits.test)
    print(f"\nOn {n} fixed test items (Wilson 95% intervals; chance is about {_chance(splits.test):.0%}):")
    tests = {}
    for key, ci, col in (("acc_norm", "acc_norm_ci95", "correct_norm"), ("accuracy", "accuracy_ci95", "correct")):
        print(f" {key} (the option's log-prob{' per character' if key == 'acc_norm' else ''}):")
        print(_line("zero-shot", before, key, ci))
        print(_line("JoLA", after, key, ci))
        tests[key] = mcnemar_exact(list(before.items[col]), list(after.items[col]))
        t = tests[key]
        print(f"  paired: {t.b_only} items fixed, {t.a_only} broken; exact McNemar p = {t.p_value:.3g}")
    prior = _position_prior(splits.test, before, after)
    print(
        f"  label-prior control: always picking the best single option position scores {prior['constant']:.1%}; "
        f"the most frequent predicted position covers {prior['zeroshot_top']:.0%} of items zero-shot, "
        f"{prior['jola_top']:.0%} with JoLA (acc_norm predictions)"
    )
    options = [list(ex.choices) for ex in splits.test]
    gold = [ex.choices.index(ex.answer) for ex in splits.test]
    longest, shortest = (length_prior_accuracy(options, gold, pick=p) for p in ("longest", "shortest"))
    print(f"  length-prior control: always the longest option scores {longest:.1%}, always the shortest {shortest:.1%}")
    summary = result.summary()
    closed = ", ".join(f"{k} {v:.0%}" for k, v in summary["closed_fraction"].items())
    print(f"\ntrainable parameters: {summary['trainable_parameters']:,}; gates closed: {closed}")
    heads = selected_heads(result.edit)
    print(f"The 10 strongest of {len(heads)} open (head, type) edits:")
    print(heads.head(10).to_string(index=False))
    main = tests["acc_norm"]
    gain = after.summary["acc_norm"] - before.summary["acc_norm"]
    if main.p_value < budget.alpha:
        print(f"\nVerdict: JoLA changed acc_norm by {gain:+.1%} (p = {main.p_value:.3g} < {budget.alpha}).")
    else:
        print(
            f"\nVerdict: no significant effect at this budget (acc_norm {gain:+.1%}, p = {main.p_value:.3g} >= "
            f"{budget.alpha}): {main.a_only + main.b_only} of {n} items changed; with {budget.n_train} training "
            "examples and a few epochs the edit moves too few of them to tell apart from chance."
        )
    if run_dir is not None:
        run_dir = Path(run_dir)
        print(f"\nsaving the run to {run_dir} (the demo's own scratch directory, git-ignored; replaced each time)")
        result.save(run_dir, overwrite=True)
        before.items.to_csv(run_dir / "test_zeroshot.csv", index=False)
        after.items.to_csv(run_dir / "test_jola.csv", index=False)
    if run_dir is not None and figures_dir is not None:
        from .analysis import make_figures
        from .analysis.figures import FigureExportError

        figures_dir = Path(figures_dir)
        try:
            written = make_figures(run_dir, figures_dir, model=model, command="make demo")
            print(
                f"heatmaps and figures: {len(written)} files in {figures_dir}/ (listed in {figures_dir / 'README.md'})"
            )
        except FigureExportError as exc:  # a missing browser must not hide the results above
            print(f"(figures not written: {exc})")
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0


def _position_prior(examples, before: EvalResult, after: EvalResult) -> dict[str, float]:
    """What a pure position prior could do: the best constant option index, and how concentrated
    the predictions are, so that a gain from preferring one position is seen as such."""
    from collections import Counter

    gold = Counter(ex.choices.index(ex.answer) for ex in examples)

    def top(res: EvalResult) -> float:
        pos = Counter(ex.choices.index(p) for ex, p in zip(examples, res.items["prediction_norm"], strict=True))
        return max(pos.values()) / len(examples)

    return {"constant": max(gold.values()) / len(examples), "zeroshot_top": top(before), "jola_top": top(after)}


def _chance(examples) -> float:
    return sum(1 / len(ex.choices) for ex in examples) / len(examples)
