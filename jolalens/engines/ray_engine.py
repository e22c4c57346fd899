"""``jolalens compare --engine ray``: every (task, method, seed) cell is one Ray task.

Each task declares its share of a machine (``cpus_per_cell``, fractional ``gpus_per_cell``, so
that many small-model cells share one GPU) and runs :func:`jolalens.compare.run_cell`, the very
function the local engine runs: same run-directory layout, ``result.json`` written last, a
failed cell's traceback in its ``error.txt``. A Ray worker keeps the model it loaded for the
next cell it gets. A worker that dies (killed, out of memory) has its cell retried up to
``max_retries`` times; a cell that still fails is recorded as failed and the rest go on. The
driver skips finished cells (resume), rewrites the summary tables as cells finish and shows one
progress bar over the grid.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from ..compare import RESULT_FILE, CompareConfig, cell_dir, cells, run_cell, write_tables
from ..errors import JolaError
from ..locking import output_lock

__all__ = ["KILL_ONCE_ENV", "RayEngineConfig", "run_compare_ray", "start_ray"]

logger = logging.getLogger(__name__)

KILL_ONCE_ENV = "JOLALENS_RAY_KILL_ONCE"  # a marker path: the first cell to create it kills its worker (tests)
ModelFactory = Callable[[], nn.Module]


@dataclass(frozen=True)
class RayEngineConfig:
    """Where and how wide the cells run.

    ``address``: an existing Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None`` starts a
    local one with ``num_cpus`` CPUs (default: all). ``worker_setup``: an importable
    ``"module.function"`` every worker runs once before its first cell.
    """

    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    num_cpus: int | None = None
    max_retries: int = 2
    progress: bool = True
    worker_setup: str | None = None

    def __post_init__(self) -> None:
        if self.cpus_per_cell <= 0 or self.gpus_per_cell < 0:
            raise ValueError("cpus_per_cell must be > 0 and gpus_per_cell >= 0 (e.g. --gpus-per-cell 0.25)")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1 (or None for all), got {self.num_cpus}")
        if self.address is not None and self.num_cpus is not None:
            raise ValueError("num_cpus sizes a local cluster only; leave it out with --address")


_MODELS: dict[str, nn.Module] = {}  # per worker process: the model its earlier cells loaded


def _model(factory: ModelFactory, key: str) -> nn.Module:
    if key not in _MODELS:
        _MODELS.clear()  # one model per worker
        _MODELS[key] = factory()
    return _MODELS[key]


def _identity_cell(factory: ModelFactory, key: str) -> dict[str, Any]:
    """The model's identity, loaded on a worker (so the driver needs no copy of the model)."""
    from ..models import model_identity

    return model_identity(_model(factory, key))


def _kill_once_if_asked(cell: str) -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, cell.encode())
    os.close(fd)
    os._exit(1)  # the worker process dies as if killed; Ray retries the cell


def _run_cell_task(
    factory: ModelFactory,
    key: str,
    config: CompareConfig,
    out: str,
    task: str,
    name: str,
    seed: int,
) -> str:
    model = _model(factory, key)
    _kill_once_if_asked(f"{task}/{name}/seed{seed}")
    return run_cell(model, config, Path(out), task, name, seed, log=logger.info)


def _runtime_env(engine: RayEngineConfig) -> dict[str, Any]:
    """jolalens' own environment variables for every worker; on a local cluster also the
    ``PYTHONPATH`` that makes the workers import the jolalens this driver runs."""
    env = {k: v for k, v in os.environ.items() if k.startswith("JOLALENS_") or k == "HF_HUB_OFFLINE"}
    if engine.address is None:
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    runtime: dict[str, Any] = {"env_vars": env}
    if engine.worker_setup:
        runtime["worker_process_setup_hook"] = engine.worker_setup
    return runtime


def start_ray(engine: RayEngineConfig) -> bool:
    """Connect to ``engine.address`` or start a local cluster; ``True`` if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if engine.address is not None:
        ray.init(address=engine.address, runtime_env=_runtime_env(engine), log_to_driver=False)
    else:
        ray.init(
            num_cpus=engine.num_cpus,
            include_dashboard=False,
            runtime_env=_runtime_env(engine),
            _temp_dir=tempfile.mkdtemp(prefix="jolalens-ray-"),
            log_to_driver=False,
        )
    return True


def run_compare_ray(
    model_factory: ModelFactory,
    config: CompareConfig,
    out: str | Path,
    engine: RayEngineConfig | None = None,
    *,
    only: Collection[tuple[str, str, int]] | None = None,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run (or resume) the comparison into ``out`` on Ray; returns the per-run results table.

    ``model_factory`` (picklable, e.g. ``functools.partial(load_model, name, device="cuda")``)
    loads the model inside a worker. ``only``: run just these (task, method, seed) cells of
    ``config``.
    A Ray cluster already connected to (:func:`start_ray`) is used and left running.
    """
    _check_ray_installed()
    import ray

    from ..compare import _check_out_dir  # the local engine's own check of the output directory

    engine = engine or RayEngineConfig()
    out = Path(out).resolve()
    worker_config = replace(config, train=replace(config.train, progress=False))  # one bar: the driver's
    key = repr(model_factory)
    lock = ExitStack()  # one driver per output directory, as the local engine's CLI run
    lock.enter_context(output_lock(out, "jolalens compare --engine ray"))
    started = start_ray(engine)
    try:
        share = {"num_cpus": engine.cpus_per_cell, "num_gpus": engine.gpus_per_cell}
        identity = ray.get(
            ray.remote(_identity_cell).options(**share, max_retries=engine.max_retries).remote(model_factory, key)
        )
        _check_out_dir(out, config, identity)
        todo = []
        for task, name, seed in cells(config):
            if only is not None and (task, name, seed) not in only:
                continue
            if (cell_dir(out, task, name, seed) / RESULT_FILE).is_file():
                log(f"skip {task}/{name}/seed{seed}: done")
            else:
                todo.append((task, name, seed))
        remote = ray.remote(_run_cell_task).options(**share, max_retries=engine.max_retries, retry_exceptions=False)
        pending = {remote.remote(model_factory, key, worker_config, str(out), *cell): cell for cell in todo}
        log(f"{len(pending)} cell(s) submitted to Ray ({engine.cpus_per_cell} CPU, {engine.gpus_per_cell} GPU each)")
        start = time.perf_counter()
        with tqdm(
            total=len(pending),
            desc="cells",
            unit="cell",
            disable=not engine.progress,
            file=sys.stderr,
        ) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task, name, seed = pending.pop(ref)
                    status = _outcome(ref, cell_dir(out, task, name, seed), engine.max_retries)
                    log(f"{status} {task}/{name}/seed{seed}")
                    if status == "done":
                        write_tables(out)
                    bar.update(1)
        if todo:
            log(f"{len(todo)} cell(s) in {time.perf_counter() - start:.0f} s")
        return write_tables(out)
    finally:
        if started:
            ray.shutdown()
        lock.close()


def _outcome(ref: Any, run_dir: Path, retries: int) -> str:
    """The cell's status; a task Ray gave up on (its worker died ``retries + 1`` times) is
    recorded as failed."""
    import ray

    try:
        return str(ray.get(ref))
    except ray.exceptions.RayError as exc:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(f"the Ray task of this cell failed after {retries} retries:\n{exc}\n")
        return "failed"


def _check_ray_installed() -> None:
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise JolaError("--engine ray needs Ray: pip install 'jolalens[ray]'") from exc
