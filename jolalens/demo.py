"""``make demo``: JoLA on one commonsense task with the embedded model, before and after.

A deliberately small budget, so that it finishes in minutes on a 2-core CPU: fewer training
examples, epochs and test items than the paper's protocol, a shorter warm-up and a larger
learning rate. The output says so. ``jolalens train --task ...`` runs the full protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .evaluate import Protocol, evaluate
from .jola import JolaConfig, selected_heads
from .models import load_model, model_dims
from .tasks import get_task, load_task_splits
from .train import SparsityConfig, TrainConfig, train_jola

__all__ = ["DemoBudget", "run_demo"]


@dataclass(frozen=True)
class DemoBudget:
    """How much work the demo does (the paper: 200/200 examples, 20 epochs, the full test split)."""

    task: str = "arc_easy"
    n_train: int = 48
    n_valid: int = 32
    n_test: int = 100
    epochs: int = 3
    lr: float = 2e-2
    warmup_steps: int = 2
    lam: float = SparsityConfig().lam
    gate_lr_scale: float = TrainConfig().gate_lr_scale
    seed: int = 42


def run_demo(
    model_name: str = "smollm2-135m-instruct",
    budget: DemoBudget | None = None,
    figures_dir: str | Path | None = "figures/demo",
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
    splits = load_task_splits(task.name, n_train=budget.n_train, n_valid=budget.n_valid, n_test=budget.n_test, seed=budget.seed)
    print(
        f"\nTask {task.name}: {len(splits.train)} train / {len(splits.valid)} valid / {len(splits.test)} test items.\n"
        f"Small demo budget (paper: 200/200, 20 epochs, lr 5e-3, 50 warm-up steps, full test split): "
        f"{budget.epochs} epochs, lr {budget.lr}, {budget.warmup_steps} warm-up steps.\n"
    )
    before = evaluate(model, splits.test, task, protocol=Protocol.LOGLIK, progress=True)
    print(f"zero-shot accuracy (log-likelihood of the answer labels): {before.summary['accuracy']:.1%}")
    result = train_jola(
        model,
        splits.train,
        splits.valid,
        jola=JolaConfig(seed=budget.seed),
        config=TrainConfig(
            lr=budget.lr, epochs=budget.epochs, warmup_steps=budget.warmup_steps, seed=budget.seed,
            gate_lr_scale=budget.gate_lr_scale, patience=budget.epochs,
        ),
        sparsity=SparsityConfig(lam=budget.lam),
    )
    after = evaluate(model, splits.test, task, edit=result.edit, protocol=Protocol.LOGLIK, progress=True)
    summary = result.summary()
    print("\n" + result.history[["epoch", "train_ce", "val_ce", "open_frac_additive", "open_frac_multiplicative"]].to_string(index=False))
    print(
        f"\naccuracy on {len(splits.test)} fixed test items: zero-shot {before.summary['accuracy']:.1%} -> "
        f"JoLA {after.summary['accuracy']:.1%}"
    )
    closed = ", ".join(f"{k} {v:.0%}" for k, v in summary["closed_fraction"].items())
    print(f"trainable parameters: {summary['trainable_parameters']:,}; closed gates: {closed}")
    heads = selected_heads(result.edit)
    print(f"\nThe 10 strongest of {len(heads)} open (head, type) edits:")
    print(heads.head(10).to_string(index=False))
    if run_dir is not None:
        run_dir = Path(run_dir)
        print(f"\nsaving the run to {run_dir} (the demo's own scratch directory; replaced each time)")
        result.save(run_dir, overwrite=True)
        # One forward+backward per batch: a first-order estimate of each head's importance to the
        # base model (true ablation of all 270 heads takes tens of minutes on this CPU).
        from .analysis import attribution_scores

        # batch_size=2: 2 examples x their options with gradients through the whole model; the
        # default 8 (32 sequences) held ~7.4 GB of saved activations, the demo's peak memory.
        scores = attribution_scores(model, splits.valid, ablation="mean", reference=splits.train, batch_size=2)
        scores.save(run_dir / "ablation" / "attribution_mean.pt")
    if run_dir is not None and figures_dir is not None:
        from .analysis import make_figures
        from .analysis.figures import FigureExportError

        figures_dir = Path(figures_dir)
        (figures_dir / "README.md").unlink(missing_ok=True)
        try:
            written = make_figures(run_dir, figures_dir, model=model, command="make demo")
            print(f"figures: {len(written)} files in {figures_dir}/ (listed in {figures_dir / 'README.md'})")
        except FigureExportError as exc:  # a missing browser must not hide the results above
            print(f"(figures not written: {exc})")
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0
