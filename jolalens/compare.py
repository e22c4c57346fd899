"""JoLA against the baselines on the same footing: one run per (task, method, seed).

Every method sees the same seeded train / valid samples and the same fixed test subset, the
same prompt, loss and early stopping, and the same hyper-parameter budget: the first
``budget`` points of its search space (ordered from the published recipe outwards), the one
with the lowest validation answer cross-entropy kept. Test data is touched once, by the kept
edit. Runs are written to ``OUT/runs/{task}/{method}/seed{seed}/`` and a run counts as done
only once its ``result.json`` exists, so an interrupted comparison resumes where it stopped
and a crashed run (its traceback kept in ``error.txt``) costs nothing else. ``results.csv``,
``summary.csv`` and ``summary.md`` are rewritten after every run.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from .baselines import (
    BitFitConfig,
    BitFitEdit,
    ItiConfig,
    LoraConfig,
    LoraEdit,
    RedConfig,
    RedEdit,
    ZeroShotEdit,
    fit_iti,
    train_lofit,
)
from .baselines.loreft import LoreftConfig, LoreftEdit, loreft_search_space
from .baselines.repe import RepeConfig, fit_repe, repe_search_space, with_search_point
from .data import Example, PromptStyle
from .edit import Edit
from .errors import JolaError
from .evaluate import Protocol, evaluate
from .fileio import atomic_path
from .jola import EditType, GateMode, JolaConfig
from .locking import LockError, output_lock
from .models import ModelDims, model_dims, model_identity
from .run_records import read_record, write_text_safely
from .tasks.registry import get_task
from .train import TrainConfig, train_edit, train_jola, validation_ce
from .validation import check_positive_int

__all__ = [
    "METHODS",
    "CompareConfig",
    "Fitted",
    "MethodSpec",
    "cell_dir",
    "cells",
    "run_cell",
    "run_compare",
    "summarise",
]


@dataclass
class Fitted:
    """One trained (or fitted) edit and its validation cross-entropy."""

    edit: Edit
    val_ce: float
    trainable_parameters: int
    info: dict[str, Any] = field(default_factory=dict)


FitFn = Callable[[nn.Module, Sequence[Example], Sequence[Example], dict[str, Any], TrainConfig, dict[str, Any]], Fitted]


@dataclass(frozen=True)
class MethodSpec:
    """A method's ordered hyper-parameter search space and how to fit one point of it."""

    name: str
    search_space: Callable[[ModelDims], list[dict[str, Any]]]
    fit: FitFn
    description: str
    needs_choices: bool = False  # only for multiple-choice tasks (ITI contrasts right and wrong options)


def _best_val(result: Any) -> float:
    return float(result.history.loc[result.history["epoch"] == result.best_epoch, "val_ce"].iloc[0])


def _jola_fit(edit_type: EditType = EditType.BOTH, gate_mode: GateMode = GateMode.SEPARATE) -> FitFn:
    """JoLA, or one of the paper's ablations of it (one edit type, a shared gate, no gates)."""

    def fit(model, train, valid, hp, cfg, ctx) -> Fitted:
        jola = JolaConfig(edit_type=edit_type, gate_mode=gate_mode)  # init seed as before: runs stay reproducible
        result = train_jola(model, train, valid, jola=jola, config=replace(cfg, lr=hp["lr"]))
        closed = {k: 1 - v for k, v in result.edit.open_fractions().items()}
        return Fitted(
            result.edit,
            _best_val(result),
            result.edit.n_trainable(),
            {"best_epoch": result.best_epoch, "closed_fraction": closed},
        )

    return fit


def _jola_space(dims: ModelDims) -> list[dict[str, Any]]:
    return [{"lr": 5e-3}, {"lr": 2e-2}, {"lr": 1e-3}, {"lr": 5e-2}]


def _fit_trained(make: Callable[[nn.Module, dict[str, Any], TrainConfig], Edit]) -> FitFn:
    def fit(model, train, valid, hp, cfg, ctx) -> Fitted:
        result = train_edit(model, make(model, hp, cfg), train, valid, config=replace(cfg, lr=hp["lr"]))
        return Fitted(result.edit, _best_val(result), result.edit.n_trainable(), {"best_epoch": result.best_epoch})

    return fit


def _n_heads(dims: ModelDims, fraction: float) -> int:
    return max(1, round(fraction * dims.n_layers * dims.n_heads))


def _fit_lofit(model, train, valid, hp, cfg, ctx) -> Fitted:
    k = _n_heads(model_dims(model), hp["k_frac"])
    res = train_lofit(
        model, train, valid, k=k, stage1_lr=hp["stage1_lr"], stage2_lr=hp["stage2_lr"], l1=hp["l1"], config=cfg
    )
    return Fitted(
        res.stage2.edit,
        _best_val(res.stage2),
        res.stage2.edit.n_trainable(),
        {"k": k, "stage1_parameters": res.stage1.edit.n_trainable(), "heads": [f"L{a}H{b}" for a, b in res.heads]},
    )


def _fit_iti(model, train, valid, hp, cfg, ctx) -> Fitted:
    key = ("iti", cfg.seed)
    if key not in ctx:  # probes and directions do not depend on k or alpha: fit them once
        ctx[key] = fit_iti(
            model,
            train,
            ItiConfig(seed=cfg.seed),
            style=cfg.prompt_style,
            max_length=cfg.max_length,
            progress=cfg.progress,
        )
    k = _n_heads(model_dims(model), hp["k_frac"])
    edit = ctx[key].with_strength(k=k, alpha=hp["alpha"])
    return Fitted(
        edit, validation_ce(model, edit, valid, config=cfg), 0, {"k": k, "stored_parameters": edit.n_stored()}
    )


def _fit_repe(model, train, valid, hp, cfg, ctx) -> Fitted:
    key = ("repe", cfg.seed)
    if key not in ctx:  # the directions do not depend on strength or layers: read them once
        ctx[key] = fit_repe(
            model,
            train,
            RepeConfig(seed=cfg.seed),
            style=cfg.prompt_style,
            max_length=cfg.max_length,
            progress=cfg.progress,
        )
    edit = with_search_point(ctx[key], hp)
    info = {"strength": edit.config.strength, "layers": list(edit.layers), "stored_parameters": edit.n_stored()}
    return Fitted(edit, validation_ce(model, edit, valid, config=cfg), 0, info)


def _fit_zeroshot(model, train, valid, hp, cfg, ctx) -> Fitted:
    edit = ZeroShotEdit.for_model(model)
    return Fitted(edit, validation_ce(model, None, valid, config=cfg), 0)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec(
            "jola", _jola_space, _jola_fit(), "gated additive + multiplicative head edits (paper recipe, lr first)"
        ),
        MethodSpec(
            "iti",
            lambda d: [
                {"k_frac": 48 / 1024, "alpha": 15.0},
                {"k_frac": 48 / 1024, "alpha": 5.0},
                {"k_frac": 16 / 1024, "alpha": 15.0},
                {"k_frac": 64 / 1024, "alpha": 10.0},
            ],
            _fit_iti,
            "probe-selected heads shifted along the mass-mean direction (K as a fraction of all heads)",
            needs_choices=True,
        ),
        MethodSpec(
            "red",
            lambda d: [{"lr": 5e-3}, {"lr": 1e-2}, {"lr": 1e-3}, {"lr": 2e-2}],
            _fit_trained(lambda m, hp, cfg: RedEdit.for_model(m, RedConfig())),
            "scale and bias on every MLP output",
        ),
        MethodSpec(
            "lofit",
            lambda d: [
                {"k_frac": 0.03, "stage1_lr": 5e-3, "l1": 5e-4, "stage2_lr": 1e-2},
                {"k_frac": 0.06, "stage1_lr": 5e-3, "l1": 5e-4, "stage2_lr": 1e-2},
                {"k_frac": 0.03, "stage1_lr": 1e-3, "l1": 1e-3, "stage2_lr": 5e-3},
                {"k_frac": 0.015, "stage1_lr": 5e-3, "l1": 1e-3, "stage2_lr": 1e-2},
            ],
            _fit_lofit,
            "L1-scaled heads, top 3% kept, bias vectors on them",
        ),
        MethodSpec(
            "lora",
            lambda d: [{"lr": 3e-4, "r": 8}, {"lr": 1e-3, "r": 8}, {"lr": 1e-4, "r": 32}, {"lr": 3e-4, "r": 32}],
            _fit_trained(
                lambda m, hp, cfg: LoraEdit.for_model(m, LoraConfig(r=hp["r"], alpha=2.0 * hp["r"], seed=cfg.seed))
            ),
            "peft LoRA on q, k, v, up, down (alpha = 2r, dropout 0.05)",
        ),
        MethodSpec(
            "bitfit",
            lambda d: [{"lr": 1e-3}, {"lr": 5e-3}, {"lr": 5e-4}, {"lr": 1e-4}],
            _fit_trained(lambda m, hp, cfg: BitFitEdit.for_model(m, BitFitConfig())),
            "zero-initialised biases on all seven linear maps",
        ),
        MethodSpec("zeroshot", lambda d: [{}], _fit_zeroshot, "the frozen model, same prompt"),
        MethodSpec(
            "loreft",
            loreft_search_space,
            _fit_trained(lambda m, hp, cfg: LoreftEdit.for_model(m, LoreftConfig(rank=hp["rank"], seed=cfg.seed))),
            "LoReFT: orthogonal low-rank edit of the residual stream, first/last 7 prompt tokens, all layers",
        ),
        MethodSpec(
            "repe",
            repe_search_space,
            _fit_repe,
            "RePE: PCA reading vector per layer (correct - wrong), added with a strength chosen on validation",
            needs_choices=True,
        ),
        # the paper's ablations of JoLA: same search space and trainer, one design choice changed
        MethodSpec(
            "jola_additive",
            _jola_space,
            _jola_fit(edit_type=EditType.ADDITIVE),
            "JoLA ablation: additive edit only (separate gates)",
        ),
        MethodSpec(
            "jola_multiplicative",
            _jola_space,
            _jola_fit(edit_type=EditType.MULTIPLICATIVE),
            "JoLA ablation: multiplicative edit only (separate gates)",
        ),
        MethodSpec(
            "jola_shared_gate",
            _jola_space,
            _jola_fit(gate_mode=GateMode.SHARED),
            "JoLA ablation: one gate per head shared by both edits",
        ),
        MethodSpec(
            "jola_no_gate",
            _jola_space,
            _jola_fit(gate_mode=GateMode.NONE),
            "JoLA ablation: no gates (every head edited, no L0 penalty)",
        ),
    ]
}


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
            raise JolaError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
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
            if k not in ("progress", "seed")
        }
        if not self.train.answer_eos:  # added later: left out at its default, so older comparisons still resume
            del train["answer_eos"]
        return {
            "n_train": self.n_train,
            "n_valid": self.n_valid,
            "n_test": self.n_test,
            "protocol": self.protocol.value,
            "budget": self.budget,
            "train": train,
        }


RESULT_FILE = "result.json"


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


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")


POINTS_DIR = (
    "points"  # the finished search points of an unfinished run, so that a stopped run resumes at the next point
)
POINT_FILE = "point.json"


def _save_point(point_dir: Path, hp: dict[str, Any], fitted: Fitted, seconds: float, device: str) -> None:
    """Keep one finished search point; ``point.json`` is written last and marks it complete."""
    fitted.edit.save(point_dir / "edit", overwrite=True)
    _write_json_atomic(
        point_dir / POINT_FILE,
        {
            "hyperparameters": hp,
            "val_ce": fitted.val_ce,
            "trainable_parameters": fitted.trainable_parameters,
            "info": fitted.info,
            "seconds": seconds,
            "device": device,
        },
    )


def _load_point(
    model: nn.Module, point_dir: Path, hp: dict[str, Any], log: Callable[[str], None] | None = None
) -> tuple[Fitted, float, str] | None:
    """A search point an interrupted attempt of this run finished (with its fit seconds and the
    device it was fitted on), or ``None`` if there is none for ``hp``; a damaged one is reported
    and refitted."""
    from .edit import load_edit

    keys = ("hyperparameters", "val_ce", "trainable_parameters", "info", "seconds")
    saved = read_record(point_dir / POINT_FILE, keys, log)
    if saved is None or saved["hyperparameters"] != json.loads(json.dumps(hp)):
        return None
    try:
        edit = load_edit(point_dir / "edit", model)
        n_trainable = int(saved["trainable_parameters"])
        fitted = Fitted(edit, float(saved["val_ce"]), n_trainable, saved["info"])
        seconds = float(saved["seconds"])
    except (JolaError, OSError, TypeError, ValueError) as exc:  # e.g. weights not committed: refit
        if log is not None:
            log(f"  damaged kept point {point_dir}: {exc}; refitting it")
        return None
    if not math.isfinite(fitted.val_ce):
        return None
    return fitted, seconds, str(saved.get("device", "unrecorded"))


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
        kept = _load_point(model, point_dir, hp, log)
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
                _save_point(point_dir, hp, fitted, seconds, device)
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
        edit=fitted.edit if spec.name != "zeroshot" else None,
        protocol=config.protocol,
        style=cfg.prompt_style,
        max_length=cfg.max_length,
        progress=cfg.progress,
    )
    result.items.drop(columns=["instruction"], errors="ignore").to_csv(run_dir / "test_items.csv", index=False)
    metric = "accuracy" if "accuracy" in result.summary else "rougeL"
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
        row.update(protocol=config.protocol.value, acc_norm=float(result.summary["acc_norm"]))
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
        if METHODS[name].needs_choices and not get_task(task).multiple_choice:
            _write_json_atomic(
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
            row = _run_one(model, METHODS[name], task, seed, config, run_dir, log)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failed run must not cost the others
            # written atomically; a full disk is logged and the comparison goes on
            write_text_safely(run_dir / "error.txt", traceback.format_exc(), log)
            log(f"  FAILED {task}/{name}/seed{seed}: {type(exc).__name__}: {exc} (see {run_dir / 'error.txt'})")
            return "failed"
        _write_json_atomic(run_dir / RESULT_FILE, row)
        log(f"  {row['metric']} {row['score']:.4f} (val CE {row['val_ce']:.4f}, {row['fit_seconds']:.0f} s fit)")
        return "done"


def collect(out: str | Path) -> pd.DataFrame:
    """Every finished run under ``out`` as one row; failed runs as ``status='failed'`` rows."""
    out = Path(out)
    rows = []
    for run_dir in sorted((out / "runs").glob("*/*/seed*")):
        task, method, seed = run_dir.parent.parent.name, run_dir.parent.name, int(run_dir.name[4:])
        row = read_record(run_dir / RESULT_FILE, ("status",))
        # damaged: listed as failed, recomputed on the next run
        if row is None and (run_dir / RESULT_FILE).is_file():
            rows.append({"task": task, "method": method, "seed": seed, "status": "failed"})
        elif row is not None:
            row["hyperparameters"] = json.dumps(row.get("hyperparameters", {}), sort_keys=True)
            row["info"] = json.dumps(row.get("info", {}), sort_keys=True)
            if "resumed_points" in row:
                row["resumed_points"] = json.dumps(row["resumed_points"])
            rows.append(row)
        elif (run_dir / "error.txt").is_file():
            rows.append({"task": task, "method": method, "seed": seed, "status": "failed"})
    return pd.DataFrame(rows)


def usual_device(results: pd.DataFrame) -> str | None:
    """The device most of the finished runs ran on (``None`` when the rows do not record one)."""
    if "device" not in results:
        return None
    devices = _finished(results)["device"].dropna()
    return None if devices.empty else str(devices.mode().iloc[0])


def _finished(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "done"] if "status" in results else results


def _resumed_elsewhere(results: pd.DataFrame) -> pd.Series:
    """Whether a run kept a search point that an earlier attempt fitted on another device."""
    if "resumed_points" not in results:
        return pd.Series(False, index=results.index)

    def elsewhere(kept: Any, device: Any) -> bool:
        if not isinstance(kept, str):
            return False
        return any(point.get("device") != device for point in json.loads(kept))

    return pd.Series(
        [elsewhere(k, d) for k, d in zip(results["resumed_points"], results["device"], strict=True)],
        index=results.index,
    )


def usual_device_times(results: pd.DataFrame) -> pd.DataFrame:
    """Wall times kept only for runs wholly on the usual device: a run moved to a slower machine,
    or one that kept a search point fitted elsewhere, would make its method's mean time
    incomparable (its score is kept)."""
    usual = usual_device(results)
    if usual is None:
        return results
    same = (results["device"] == usual) & ~_resumed_elsewhere(results)
    return results.assign(
        fit_seconds=results["fit_seconds"].where(same), eval_seconds=results["eval_seconds"].where(same)
    )


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (task, method), with parameters and wall time.

    Wall times are means over the runs on the usual device only (:func:`usual_device_times`).
    """
    if results.empty or "score" not in results:
        return pd.DataFrame(
            columns=["task", "method", "mean", "std", "n_seeds", "trainable_parameters", "fit_seconds", "eval_seconds"]
        )
    done = usual_device_times(_finished(results))
    grouped = done.groupby(["task", "method"], sort=False)
    summary = grouped.agg(
        mean=("score", "mean"),
        std=("score", "std"),
        n_seeds=("seed", "nunique"),
        trainable_parameters=("trainable_parameters", "mean"),
        fit_seconds=("fit_seconds", "mean"),
        eval_seconds=("eval_seconds", "mean"),
        val_ce=("val_ce", "mean"),
    ).reset_index()
    return summary


def markdown_table(
    summary: pd.DataFrame,
    methods_order: Sequence[str] | None = None,
    not_applicable: pd.DataFrame | None = None,
    *,
    scale: float = 100.0,
) -> str:
    """Methods as rows, tasks as columns (``mean ± std`` in %), then average, parameters, time.

    ``not_applicable``: rows (task, method) shown as ``n/a`` instead of ``–`` (not run yet).
    ``scale``: 100 for accuracies stored as fractions, 1 for BLEU / ROUGE (already in %).
    """
    if summary.empty:
        return "_no finished runs yet_\n"
    results_na = not_applicable if not_applicable is not None else pd.DataFrame(columns=["task", "method"])
    tasks = list(dict.fromkeys(summary["task"]))
    order = [m for m in (methods_order or METHODS) if m in set(summary["method"])]
    header = "| method | " + " | ".join(tasks) + " | average | trainable params | fit s (mean) |"
    lines = [header, "|" + "---|" * (len(tasks) + 4)]
    for method in order:
        rows = summary[summary["method"] == method].set_index("task")
        cells, means = [], []
        for task in tasks:
            if task in rows.index:
                r = rows.loc[task]
                std = "" if pd.isna(r["std"]) else f" ± {scale * r['std']:.1f}"
                cells.append(f"{scale * r['mean']:.1f}{std} (n={int(r['n_seeds'])})")
                means.append(r["mean"])
            elif not results_na.empty and ((results_na["task"] == task) & (results_na["method"] == method)).any():
                cells.append("n/a")
            else:
                cells.append("–")
        avg = f"{scale * sum(means) / len(means):.1f}" if len(means) == len(tasks) else "–"
        params = int(rows["trainable_parameters"].iloc[0])
        fit = rows["fit_seconds"].mean()
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {avg} | {params:,} | {'–' if pd.isna(fit) else f'{fit:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(out: str | Path) -> pd.DataFrame:
    """Rewrite ``results.csv``, ``summary.csv`` and ``summary.md`` from the finished runs."""
    out = Path(out)
    results = collect(out)
    # a full disk leaves the previous tables, never 0-byte ones
    with atomic_path(out / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    summary = summarise(results)
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    failed = results[results["status"] == "failed"] if "status" in results else results
    note = ""
    if len(failed):
        note = (
            "\nFailed runs (see their error.txt; rerun the same command to retry): "
            + ", ".join(f"{r.task}/{r.method}/seed{r.seed}" for r in failed.itertuples())
            + "\n"
        )
    metric = results["metric"].dropna().iloc[0] if "metric" in results and results["metric"].notna().any() else "score"
    usual = usual_device(results)
    others = sorted(set(_finished(results)["device"].dropna()) - {usual}) if usual else []
    if others:
        note += (
            f"\n`fit s`: mean over the runs on {usual} only; "
            f"runs on {', '.join(others)} are left out of it (–: all were).\n"
        )
    text = (
        f"# jolalens compare: test {metric} (%), mean ± std over seeds\n\n"
        + markdown_table(
            summary,
            not_applicable=results[results["status"] == "not_applicable"] if "status" in results else None,
            scale=100.0 if metric == "accuracy" else 1.0,
        )
        + note
    )
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(text)
    return results
