"""JoLA against the baselines on the same footing: one run per (task, method, seed).

Every method sees the same seeded train / valid samples and the same fixed test subset, the
same prompt, loss and early stopping, and the same hyper-parameter budget: the first
``budget`` points of its search space (ordered from the published recipe outwards), the one
with the lowest validation answer cross-entropy kept. Test data is touched once, by the kept
edit. Runs are written to ``OUT/runs/{task}/{method}/seed{seed}/`` and a run counts as done
only once its ``result.json`` exists, so an interrupted comparison resumes where it stopped
and a crashed run (its traceback kept in ``error.txt``) costs nothing else. ``results.csv``,
``summary.csv`` and ``summary.md`` are rewritten after every run.

The methods, their search spaces and fit functions are the registry's
(:data:`jolalens.methods.METHODS`); the tables are written by :mod:`jolalens.compare_tables`.
Both are re-exported here.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from .compare_points import POINTS_DIR, load_point, save_point, write_json_atomic
from .compare_tables import (
    RESULT_FILE,
    collect,
    markdown_table,
    summarise,
    usual_device,
    usual_device_times,
    write_tables,
)
from .data import PromptStyle
from .errors import JolaError
from .evaluate import Protocol, evaluate
from .fileio import atomic_path
from .locking import LockError, output_lock
from .methods import METHODS, Fitted, MethodSpec, get_method
from .models import model_dims, model_identity
from .run_records import read_record, write_text_safely
from .tasks.registry import get_task
from .train import TrainConfig
from .validation import check_positive_int

__all__ = [  # the method registry and the tables are re-exported: import them from here or their modules
    "METHODS",
    "RESULT_FILE",
    "CompareConfig",
    "Fitted",
    "MethodSpec",
    "cell_dir",
    "cells",
    "collect",
    "markdown_table",
    "run_cell",
    "run_compare",
    "summarise",
    "usual_device",
    "usual_device_times",
    "write_tables",
]


@dataclass(frozen=True)
class CompareConfig:
    """What a comparison runs. ``budget``: hyper-parameter points tried per method (all equal)."""

    methods: tuple[str, ...]
    tasks: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    n_train: int = 200
    n_valid: int = 200
    n_test: int | None = 500
    protocol: Protocol = Protocol.LOGLIK
    budget: int = 2
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", Protocol(self.protocol))
        if self.protocol is Protocol.CLOZE and self.train.prompt_style is not PromptStyle.CLOZE:
            object.__setattr__(self, "train", replace(self.train, prompt_style=PromptStyle.CLOZE))  # train as scored
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise JolaError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if not self.methods or not self.tasks or not self.seeds:
            raise JolaError("give at least one method, one task and one seed")
        if self.budget < 1:
            raise JolaError(f"budget must be >= 1, got {self.budget}")
        check_positive_int(self.n_train, "n_train")
        check_positive_int(self.n_valid, "n_valid")
        if self.n_test is not None:
            check_positive_int(self.n_test, "n_test (full split: None, or 0 on the command line)")

    def protocol_dict(self) -> dict[str, Any]:
        """Everything that makes runs comparable (methods, tasks and seeds may grow later)."""
        train = {
            k: (v.value if hasattr(v, "value") else v)
            for k, v in asdict(self.train).items()
            if k not in ("progress", "seed", "checkpoint_activations")  # the last changes memory, not results
        }
        for key, default in (("answer_eos", False), ("length_grouping", 1)):
            if train[key] == default:  # added later: left out at its default, so older comparisons still resume
                del train[key]
        return {
            "n_train": self.n_train,
            "n_valid": self.n_valid,
            "n_test": self.n_test,
            "protocol": self.protocol.value,
            "budget": self.budget,
            "train": train,
        }


def _check_out_dir(out: Path, config: CompareConfig, identity: dict[str, Any]) -> None:
    stamp = {"protocol": config.protocol_dict(), "model": identity}
    path = out / "compare_config.json"
    if path.is_file():
        saved = read_record(path)
        if saved is None:
            raise JolaError(f"{path} is damaged; restore it from a backup, or choose a new --out")
        if saved != json.loads(json.dumps(stamp)):
            raise JolaError(
                f"{out} holds a comparison made with other settings or another model "
                f"(see {path}); resume it with the same settings, or choose a new --out"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise JolaError(f"{out} exists, is not empty and is not a jolalens comparison; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    # atomic, so that several processes sharing one comparison directory never read half a file
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")


def _run_one(
    model: nn.Module,
    spec: MethodSpec,
    task: str,
    seed: int,
    config: CompareConfig,
    run_dir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from .tasks import load_task_splits

    splits = load_task_splits(
        task,
        n_train=config.n_train,
        n_valid=config.n_valid,
        n_test=config.n_test,
        seed=seed,
        protocol=config.protocol.value,
    )
    cfg = replace(config.train, seed=seed)
    points = spec.search_space(model_dims(model))[: config.budget]
    ctx: dict[str, Any] = {}
    search, best = [], None
    fit_seconds = 0.0
    device = str(next(model.parameters()).device)
    resumed: list[dict[str, Any]] = []  # points fitted by an earlier attempt, perhaps on another device
    for i, hp in enumerate(points):
        point_dir = run_dir / POINTS_DIR / f"point{i}"
        kept = load_point(model, point_dir, hp, log)
        if kept is not None:
            fitted, seconds, kept_on = kept
            resumed.append({"point": i + 1, "device": kept_on, "fit_seconds": round(seconds, 1)})
            log(
                f"  {spec.name} {task} seed {seed}: point {i + 1}/{len(points)} {hp} "
                f"kept from an interrupted attempt (val CE {fitted.val_ce:.4f})"
            )
        else:
            log(f"  {spec.name} {task} seed {seed}: point {i + 1}/{len(points)} {hp}")
            t0 = time.perf_counter()
            fitted = spec.fit(model, splits.train, splits.valid, hp, cfg, ctx)
            seconds = time.perf_counter() - t0
            if not math.isfinite(fitted.val_ce):
                raise JolaError(f"validation CE is {fitted.val_ce} for {hp}")
            if len(points) > 1:
                save_point(point_dir, hp, fitted, seconds, device)
        fit_seconds += seconds
        search.append({**hp, "val_ce": fitted.val_ce})
        if best is None or fitted.val_ce < best[1].val_ce:  # an exact tie keeps the earlier point
            best = (hp, fitted)
        else:
            del fitted
    assert best is not None
    hp, fitted = best
    fitted.edit.save(run_dir / "edit")
    pd.DataFrame(search).to_csv(run_dir / "search.csv", index=False)
    result = evaluate(
        model,
        splits.test,
        task,
        edit=None if spec.unedited else fitted.edit,
        protocol=config.protocol,
        style=cfg.prompt_style,
        max_length=cfg.max_length,
        progress=cfg.progress,
    )
    result.items.drop(columns=["instruction"], errors="ignore").to_csv(run_dir / "test_items.csv", index=False)
    # the headline metric: acc_norm under cloze (lm-eval's, length-normalised), else accuracy or ROUGE-L
    metric = "acc_norm" if "acc_norm" in result.summary else "accuracy" if "accuracy" in result.summary else "rougeL"
    shutil.rmtree(run_dir / POINTS_DIR, ignore_errors=True)  # search.csv and the kept edit hold what they did
    row = {
        "task": task,
        "method": spec.name,
        "seed": seed,
        "status": "done",
        "metric": metric,
        "score": float(result.summary[metric]),
        "n_test": len(splits.test),
        "n_train": len(splits.train),
        "n_valid": len(splits.valid),
        "val_ce": fitted.val_ce,
        "hyperparameters": hp,
        "trainable_parameters": fitted.trainable_parameters,
        "fit_seconds": round(fit_seconds, 1),
        "eval_seconds": round(float(result.summary["seconds"]), 1),
        "device": device,
        "info": fitted.info,
    }
    if config.protocol is Protocol.CLOZE:
        row.update(protocol=config.protocol.value, accuracy=float(result.summary["accuracy"]))
    if resumed:  # fit_seconds then sums attempts that may have run on different devices
        row["resumed_points"] = resumed
    return row


def run_compare(
    model: nn.Module,
    config: CompareConfig,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    exclusive: bool = False,
) -> pd.DataFrame:
    """Run (or resume) the comparison into ``out``; returns the per-run results table.

    ``exclusive`` (what ``jolalens compare`` uses): hold ``out``'s lock alone for the whole
    comparison, so a second process is refused with :class:`~jolalens.locking.LockError`
    naming the holder. Otherwise (cooperating workers, e.g. ``benchmarks/paper_grid.py``):
    share ``out``'s lock and take each run's own lock, skipping runs another process holds.
    Either way no process cleans up or writes a run another one is working on.
    ``jolalens.engines.ray_engine.run_compare_ray`` runs the same cells (:func:`run_cell`) on a Ray cluster.
    """
    out = Path(out)
    with output_lock(out, "jolalens compare", shared=not exclusive):
        return _run_compare_locked(model, config, out, log, per_run_locks=not exclusive)


@contextmanager
def _run_lock(run_dir: Path, enabled: bool) -> Iterator[bool]:
    """Yield whether this process may work on ``run_dir`` (holding its lock when ``enabled``)."""
    if not enabled:
        yield True
        return
    try:
        lock = output_lock(run_dir, "jolalens compare run")
        lock.__enter__()
    except LockError:
        yield False
        return
    try:
        yield True
    finally:
        lock.__exit__(None, None, None)


def _run_compare_locked(
    model: nn.Module,
    config: CompareConfig,
    out: Path,
    log: Callable[[str], None],
    per_run_locks: bool,
) -> pd.DataFrame:
    _check_out_dir(out, config, model_identity(model))
    for task, name, seed in cells(config):
        if run_cell(model, config, out, task, name, seed, log=log, run_lock=per_run_locks) == "done":
            write_tables(out)
    return write_tables(out)


def cells(config: CompareConfig) -> list[tuple[str, str, int]]:
    """Every (task, method, seed) of ``config`` in the order the local engine runs them."""
    return [(task, name, seed) for task in config.tasks for seed in config.seeds for name in config.methods]


def cell_dir(out: str | Path, task: str, method: str, seed: int) -> Path:
    """The run directory of one cell: ``OUT/runs/{task}/{method}/seed{seed}``."""
    return Path(out) / "runs" / task / method / f"seed{seed}"


def run_cell(
    model: nn.Module,
    config: CompareConfig,
    out: Path,
    task: str,
    name: str,
    seed: int,
    *,
    log: Callable[[str], None] = print,
    run_lock: bool = False,
) -> str:
    """Run one cell into its run directory, ``result.json`` last; ``'skipped'`` (already done),
    ``'busy'`` (another process holds its lock), ``'done'``, ``'not_applicable'`` or ``'failed'``
    (traceback in ``error.txt``; nothing raised). ``run_lock``: hold the run's own lock."""
    run_dir = cell_dir(out, task, name, seed)
    with _run_lock(run_dir, run_lock) as free:
        if not free:  # another cooperating process runs it now
            log(f"skip {task}/{name}/seed{seed}: running in another process")
            return "busy"
        if read_record(run_dir / RESULT_FILE, ("status",), log) is not None:
            log(f"skip {task}/{name}/seed{seed}: done")
            return "skipped"
        if run_dir.exists():  # a crashed or interrupted attempt of this very run: keep its finished points
            for stale in run_dir.iterdir():
                if stale.is_dir() and stale.name != POINTS_DIR:
                    shutil.rmtree(stale)
                elif not stale.is_dir():
                    stale.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = get_method(name)
        if spec.needs_choices and not get_task(task).multiple_choice:
            write_json_atomic(
                run_dir / RESULT_FILE,
                {
                    "task": task,
                    "method": name,
                    "seed": seed,
                    "status": "not_applicable",
                    "reason": f"{name} needs answer options; {task} is a generation task",
                },
            )
            log(f"  {name} does not apply to {task} (a generation task): recorded as not applicable")
            return "not_applicable"
        log(f"run {task}/{name}/seed{seed}")
        try:
            row = _run_one(model, spec, task, seed, config, run_dir, log)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failed run must not cost the others
            # written atomically; a full disk is logged and the comparison goes on
            write_text_safely(run_dir / "error.txt", traceback.format_exc(), log)
            log(f"  FAILED {task}/{name}/seed{seed}: {type(exc).__name__}: {exc} (see {run_dir / 'error.txt'})")
            return "failed"
        write_json_atomic(run_dir / RESULT_FILE, row)
        log(f"  {row['metric']} {row['score']:.4f} (val CE {row['val_ce']:.4f}, {row['fit_seconds']:.0f} s fit)")
        return "done"
