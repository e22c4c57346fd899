"""The paper's comparison grid (issue #7) as one prioritised, resumable work queue.

Every cell is one ``jolalens compare`` run (task, method, seed) in one of five groups that share a
protocol: ``main`` (8 commonsense tasks, the 7 methods and the 4 JoLA ablations), ``nlu`` (MMLU
domains), ``nlg`` (GEM tasks, generation protocol), ``datasize`` (50-1000 training examples) and
``gen`` (the main table's kept edits re-scored with the generation protocol). The paper's sizes
throughout: 200 train / 200 valid examples, up to 20 epochs with early stopping, the same 500
test items per task (or the whole split if smaller), 2 hyper-parameter points per method chosen
on validation cross-entropy only.

Several worker processes share the queue (a cell is claimed by creating its lock file), so the
cells of a small model run side by side on one GPU. Results go to ``OUT/{group}/runs/...`` exactly
as ``jolalens compare`` writes them; rerunning the command resumes (done cells are skipped, lost
claims are retried). A claim whose worker still runs on this machine is kept, so a second
coordinator with other ``--tasks`` or ``--methods`` can run beside the first. Usage::

    python benchmarks/paper_grid.py --plan                          # list the cells, in order
    python benchmarks/paper_grid.py --device cuda --workers 12 --deadline 500
    python benchmarks/paper_grid.py --device cpu --workers 1        # resume here, slowly
    python benchmarks/paper_grid.py --tables                        # rewrite every summary
    python benchmarks/paper_grid.py --device cpu --workers 2 --only main --skip 'main__piqa__*'

``--skip`` leaves out the cells whose keys match (shell wildcards), e.g. those too long to finish
before a session ends; unlike a claim file written by hand, it holds for this invocation only and
no worker waits on it.

``--deadline S`` is for a machine lent by the minute: claims stop at 85% of S and the workers are
killed at S, whatever they run. ``--let-running-finish`` turns it into a soft deadline for a
machine of one's own: claims stop at S and running cells are left to finish.

``--snapshot DIR`` packs what the run finished (edits over 300 kB left out) into tarballs of at most
14 MiB under DIR every 30 s, so that a run cut off by a time limit still returns what it finished.
Files the output folder already held when the run started are not packed again.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

OUT = Path(__file__).parent / "results" / "paper_grid"

COMMONSENSE = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "siqa", "winogrande")
MMLU = ("mmlu_business", "mmlu_economics", "mmlu_health", "mmlu_history", "mmlu_law",
        "mmlu_math", "mmlu_other", "mmlu_philosophy", "mmlu_physics", "mmlu_psychology")
GEM = ("common_gen", "e2e_nlg", "web_nlg", "xsum")
BASELINES = ("zeroshot", "jola", "iti", "red", "lofit", "bitfit", "lora")
SEED_ORDER = ("red", "bitfit", "lofit", "iti", "lora")  # by seed-0 average (RED 36.7 ... ITI 35.9; LoRA unfinished)
ABLATIONS = ("jola_additive", "jola_multiplicative", "jola_shared_gate", "jola_no_gate")
ABLATION_TASKS = ("openbookqa", "arc_easy", "boolq", "piqa")
DATASIZE_TASKS = ("arc_easy", "boolq")
DATASIZES = (50, 100, 200, 500, 1000)
DATASIZE_METHODS = ("jola", "red", "lora")
SEEDS = (0, 1, 2)
KEEP_EDIT_BYTES = 300_000  # edits that come back from a GPU machine and are committed


@dataclass(frozen=True)
class Cell:
    """One run of the grid: ``group`` names the comparison directory it belongs to."""

    group: str
    task: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.group}__{self.task}__{self.method}__seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / self.group / "runs" / self.task / self.method / f"seed{self.seed}"


def group_config(group: str, *, smoke: bool = False, eval_batch_size: int = 8):
    """The CompareConfig of a group (its protocol stamp); ``smoke``: tiny sizes for a dry run."""
    from jolalens import TrainConfig
    from jolalens.compare import CompareConfig
    from jolalens.evaluate import Protocol

    train = TrainConfig(epochs=20, warmup_steps=50, progress=False, eval_batch_size=eval_batch_size)
    n_train, n_valid, n_test = 200, 200, 500
    if group.startswith("datasize_n"):
        n_train = int(group.removeprefix("datasize_n"))
    if smoke:
        train = TrainConfig(epochs=1, warmup_steps=1, progress=False, eval_batch_size=eval_batch_size)
        n_train, n_valid, n_test = min(n_train, 8), 8, 8
    protocol = Protocol.GEN if group == "nlg" else Protocol.LOGLIK
    tasks = {"main": COMMONSENSE, "rerun": COMMONSENSE, "nlu": MMLU, "nlg": GEM}.get(group, DATASIZE_TASKS)
    methods = tuple(dict.fromkeys(BASELINES + ABLATIONS))
    return CompareConfig(methods=methods, tasks=tasks, seeds=SEEDS, n_train=n_train, n_valid=n_valid,
                         n_test=n_test, protocol=protocol, budget=2, train=train)


def plan() -> list[Cell]:
    """Every cell, in the order that covers the issue's tables soonest.

    Seed 0 of the main table; the JoLA ablations on four tasks; JoLA's seeds 1 and 2 (is its
    seed-0 lead more than noise?); NLG and NLU; the data-size curves; the generation protocol for
    the main table's seed-0 edits; the other methods' seeds 1 and 2, strongest seed-0 average
    first; then the ablations' seeds and remaining tasks; last, the generation protocol of the
    later seeds' edits where a deadline cut it off.
    """
    cells = [Cell("main", t, m, 0) for m in BASELINES for t in COMMONSENSE]
    cells += [Cell("main", t, m, 0) for m in ABLATIONS for t in ABLATION_TASKS]
    cells += [Cell("main", t, "jola", s) for s in (1, 2) for t in COMMONSENSE]
    cells += [Cell("nlg", t, m, 0) for t in GEM for m in ("zeroshot", "jola", "red")]
    cells += [Cell("nlu", t, m, 0) for t in MMLU for m in ("zeroshot", "jola", "iti", "red")]
    # n = 200 is the main table's protocol: those runs are the curves' middle point
    cells += [Cell(f"datasize_n{n}", t, m, 0) for n in DATASIZES if n != 200 for t in DATASIZE_TASKS for m in DATASIZE_METHODS]
    cells += [Cell("gen", t, m, 0) for m in BASELINES for t in COMMONSENSE]
    cells += [Cell("main", t, m, s) for m in SEED_ORDER for s in (1, 2) for t in COMMONSENSE]
    cells += [Cell("main", t, m, s) for s in (1, 2) for m in ABLATIONS for t in ABLATION_TASKS]
    cells += [Cell("main", t, m, 0) for m in ABLATIONS for t in COMMONSENSE if t not in ABLATION_TASKS]
    # a main cell scores both protocols before it is done, so the generation protocol of a later
    # seed is queued only where a deadline stopped the cell between its two scores
    cells += [Cell("gen", c.task, c.method, c.seed) for c in list(cells) if c.group == "main" and c.seed > 0]
    return cells


def selected(only: set[str] | None, methods: set[str] | None, tasks: set[str] | None = None,
             skip: tuple[str, ...] = ()) -> list[Cell]:
    """The plan, restricted to some groups, methods and/or tasks (``None``: all of them), less the
    cells whose key matches a ``skip`` pattern (shell wildcards, e.g. ``main__piqa__*``)."""
    return [c for c in plan() if (only is None or c.group in only) and (methods is None or c.method in methods)
            and (tasks is None or c.task in tasks) and not any(fnmatch.fnmatchcase(c.key, pat) for pat in skip)]


def _done(cell: Cell, out: Path) -> bool:
    name = "gen_result.json" if cell.group == "gen" else "result.json"
    if cell.group == "gen":
        return (Cell("main", cell.task, cell.method, cell.seed).run_dir(out) / name).is_file()
    return (cell.run_dir(out) / name).is_file()


def _ready(cell: Cell, out: Path) -> bool:
    """Re-scoring needs the main run's kept edit first."""
    return cell.group != "gen" or (Cell("main", cell.task, cell.method, cell.seed).run_dir(out) / "result.json").is_file()


def waits_on_a_running_run(todo: list[Cell], out: Path) -> bool:
    """Whether a re-scoring cell left to do needs a main run that a worker is running now; a
    worker with nothing else to claim waits for it and exits otherwise."""
    for cell in todo:
        main = Cell("main", cell.task, cell.method, cell.seed)
        if (cell.group == "gen" and not _ready(cell, out) and (out / "claims" / main.key).exists()
                and not (main.run_dir(out) / "error.txt").exists()):
            return True
    return False


def _claim(cell: Cell, out: Path, worker: int) -> bool:
    path = out / "claims" / cell.key
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"worker {worker} pid {os.getpid()} start {_process_start(os.getpid())} host {socket.gethostname()} "
                 f"at {time.time():.0f}\n".encode())
    os.close(fd)
    return True


def _process_start(pid: int) -> str:
    """When a process started (clock ticks since boot, from /proc; "?" where there is no /proc):
    a pid reused by another process after a worker died must not keep the worker's claim alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _claim_is_live(path: Path) -> bool:
    """Whether a claim's process still runs on this machine: a second coordinator started beside a
    first must not take back the cells the first one's workers are running."""
    words = path.read_text().split()
    try:
        pid, host = int(words[words.index("pid") + 1]), words[words.index("host") + 1]
    except (ValueError, IndexError):
        return False  # an older or hand-made claim: nothing says who holds it
    if host != socket.gethostname():
        return False  # claimed on another machine (a lent GPU) whose run has ended
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, under another user
    started = words[words.index("start") + 1] if "start" in words else "?"
    return started == "?" or started == _process_start(pid)  # "?": an older claim, or no /proc


def uncached_tasks(cells: list[Cell]) -> list[str]:
    """The cells' tasks that are not in this machine's task cache. A lent GPU machine has no
    network and gets only the cache, so a task missing here fails there at once."""
    from jolalens.tasks.sources import cached_split_sizes

    return sorted(t for t in {c.task for c in cells} if not cached_split_sizes(t))


def release_stale_claims(out: Path) -> list[str]:
    """Remove the claims of cells that never finished and whose process is gone, so they run again."""
    released = []
    for claim in sorted((out / "claims").iterdir()):
        key = claim.name.split("__")
        if len(key) == 4 and not _done(Cell(key[0], key[1], key[2], int(key[3][4:])), out) and not _claim_is_live(claim):
            claim.unlink()
            released.append(claim.name)
    return released


def compress_items(run_dir: Path) -> None:
    """``test_items.csv`` -> ``.csv.gz`` (a third of the size): every committed byte also travels
    to each lent GPU machine with the working tree."""
    import gzip

    plain = run_dir / "test_items.csv"
    if plain.is_file():
        tmp = run_dir / ".test_items.csv.gz.tmp"
        tmp.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
        tmp.replace(run_dir / "test_items.csv.gz")
        plain.unlink()


def edit_kept(run_dir: Path, method: str) -> bool:
    """Whether a run's trained weights are on disk (zero-shot has none to keep)."""
    return method == "zeroshot" or (run_dir / "edit" / "jola_weights.safetensors").is_file()


def rescore_generation(model, cell: Cell, out: Path, config, *, edit_dir: Path | None = None,
                       provenance: dict | None = None) -> dict:
    """Score a main-table run's edit with the generation protocol on the same test items.

    ``edit_dir``: where the edit is (default: the main run's own ``edit/``); ``provenance`` is
    recorded in ``gen_result.json`` when the edit comes from a retrained copy of the run.
    """
    from jolalens import load_edit
    from jolalens.evaluate import Protocol, evaluate
    from jolalens.tasks import load_task_splits

    run_dir = Cell("main", cell.task, cell.method, cell.seed).run_dir(out)
    splits = load_task_splits(cell.task, n_train=0, n_valid=0, n_test=config.n_test, seed=cell.seed)
    edit = None if cell.method == "zeroshot" else load_edit(edit_dir or run_dir / "edit", model)
    result = evaluate(model, splits.test, cell.task, edit=edit, protocol=Protocol.GEN,
                      style=config.train.prompt_style, max_length=config.train.max_length, progress=False)
    result.items.drop(columns=["instruction"], errors="ignore").to_csv(run_dir / "gen_test_items.csv.gz", index=False)
    row = {"task": cell.task, "method": cell.method, "seed": cell.seed, "protocol": "gen",
           "accuracy": float(result.summary["accuracy"]), "n_test": len(splits.test),
           "unparsed": float(result.summary["unparsed"]),
           "eval_seconds": round(float(result.summary["seconds"]), 1), "device": str(next(model.parameters()).device),
           **(provenance or {})}
    tmp = run_dir / ".gen_result.json.tmp"
    tmp.write_text(json.dumps(row, indent=2) + "\n")
    tmp.replace(run_dir / "gen_result.json")
    return row


def reextract_generation(run_dir: Path, task: str, test: list) -> tuple[float, float] | None:
    """Read the answers of a run's stored generations again with the current extractor.

    The generated text is kept per item, so a change to ``extract_answer`` needs no GPU: the
    predictions, ``correct`` and ``gen_result.json`` are rewritten in place. ``test``: the task's
    test examples the run was scored on. Returns the accuracy before and after, or None when the
    run has no stored generations.
    """
    import pandas as pd

    from jolalens.evaluate import extract_answer

    path, result_path = run_dir / "gen_test_items.csv.gz", run_dir / "gen_result.json"
    if not (path.is_file() and result_path.is_file()):
        return None
    items = pd.read_csv(path, dtype={"answer": str, "output": str, "prediction": str}, keep_default_na=False, na_values=[""])
    if len(items) != len(test) or list(items["answer"].astype(str)) != [ex.answer for ex in test]:
        raise ValueError(f"{path}: its items are not the first {len(test)} test items of {task}; rescore it on a GPU instead")
    outputs = items["output"].fillna("").astype(str)
    predictions = [extract_answer(o, task, ex.choices) for o, ex in zip(outputs, test, strict=True)]
    row = json.loads(result_path.read_text())
    before = float(row["accuracy"])
    stored = [None if pd.isna(p) else p for p in items["prediction"]]
    if stored == predictions and "unparsed" in row:
        return before, before  # unchanged: leave the files (and their gzip timestamps) alone
    items["prediction"] = predictions
    items["correct"] = [p is not None and p == ex.answer for p, ex in zip(predictions, test, strict=True)]
    row.update(accuracy=float(items["correct"].mean()), unparsed=float(sum(p is None for p in predictions) / len(items)))
    if stored != predictions:
        items.to_csv(path, index=False)
    result_path.write_text(json.dumps(row, indent=2) + "\n")
    return before, row["accuracy"]


def score_generation(model, cell: Cell, out: Path, config, log) -> dict:
    """A ``gen`` cell: re-score the main run's edit, retraining it (group ``rerun``) if not kept."""
    from jolalens.compare import run_compare

    main_dir = Cell("main", cell.task, cell.method, cell.seed).run_dir(out)
    if edit_kept(main_dir, cell.method):
        return rescore_generation(model, cell, out, config)
    again = Cell("rerun", cell.task, cell.method, cell.seed)
    if not (again.run_dir(out) / "result.json").is_file():
        log(f"  {main_dir} kept no weights: retraining it as {again.key}")
        run_compare(model, config, out / "rerun", log=log)
        compress_items(again.run_dir(out))
    if not edit_kept(again.run_dir(out), cell.method):
        raise FileNotFoundError(f"{again.run_dir(out)} has no edit weights either; delete that run to retrain it")
    main_score = json.loads((main_dir / "result.json").read_text())["score"]
    rerun_score = json.loads((again.run_dir(out) / "result.json").read_text())["score"]
    provenance = {"edit_from": f"rerun/runs/{cell.task}/{cell.method}/seed{cell.seed}",
                  "loglik_score_main": main_score, "loglik_score_rerun": rerun_score}
    return rescore_generation(model, cell, out, config, edit_dir=again.run_dir(out) / "edit", provenance=provenance)


def deadline_times(t0: float, deadline: float | None, *, let_running_finish: bool = False) -> tuple[float | None, float | None]:
    """When to stop claiming cells and when to kill the workers (``None``: never).

    A lent machine stops claiming at 85% of the deadline and kills at 100%, so that the lease ends
    with its results packed; with ``let_running_finish`` claims stop at the deadline and nothing is
    killed, so that no cell's hours are thrown away on a machine that is not lent by the minute.
    """
    if deadline is None:
        return None, None
    if let_running_finish:
        return t0 + deadline, None
    return t0 + 0.85 * deadline, t0 + deadline


def worker(args: argparse.Namespace, index: int) -> int:
    """Claim and run cells until none is left or the claim deadline passes."""
    import torch

    from jolalens import load_model
    from jolalens.compare import run_compare

    torch.set_num_threads(max(1, args.threads))
    if args.tf32:  # fp32 weights, TF32 matrix products: ~4x the fp32 rate of an H100
        torch.set_float32_matmul_precision("high")
    out: Path = args.out
    stop_at = float(args.stop_claiming_at) if args.stop_claiming_at else float("inf")
    # the grid is float32 (load_model's GPU default is bf16)
    model = load_model(device=args.device, dtype="float32")
    log_dir: Path = args.log_dir or out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker{index}.log"

    def log(msg: str) -> None:
        with open(log_path, "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    log(f"worker {index} ready on {args.device}")
    cells = selected(args.only, args.methods, args.tasks, args.skip)
    while time.time() < stop_at:
        todo = [c for c in cells if not _done(c, out)]
        ready = [c for c in todo if _ready(c, out) and not (out / "claims" / c.key).exists()]
        if not ready:
            if not waits_on_a_running_run(todo, out):
                break  # done, claimed by another worker, or waiting on a main run that failed
            time.sleep(5)  # re-scoring cells wait for their main run
            continue
        cell = ready[0]
        if not _claim(cell, out, index):
            continue
        if cell.group == "main":
            # this worker scores the run's generation protocol itself once the run is done: hold
            # the re-scoring cell, or an idle worker would claim it the moment result.json appears
            # and score the same edit a second time beside this one (the eighth lease did, 9 times)
            _claim(Cell("gen", cell.task, cell.method, cell.seed), out, index)
        t0 = time.perf_counter()
        log(f"start {cell.key}")
        try:
            config = group_config("main" if cell.group == "gen" else cell.group, smoke=args.smoke, eval_batch_size=args.eval_batch_size)
            one = replace(config, methods=(cell.method,), tasks=(cell.task,), seeds=(cell.seed,))
            if cell.group == "gen":
                row = score_generation(model, cell, out, one, log)
                log(f"done {cell.key}: gen accuracy {row['accuracy']:.3f} in {time.perf_counter() - t0:.0f} s")
                continue
            run_compare(model, one, out / cell.group, log=log)
            compress_items(cell.run_dir(out))
            if cell.group == "main" and (cell.run_dir(out) / "result.json").is_file():
                # both protocols while the edit is on disk here (LoRA weights are too large to keep)
                row = rescore_generation(model, Cell("gen", cell.task, cell.method, cell.seed), out, one)
                log(f"  gen-protocol accuracy {row['accuracy']:.3f}")
            finished = (cell.run_dir(out) / "result.json").is_file()
            log(f"{'done' if finished else 'FAILED'} {cell.key} in {time.perf_counter() - t0:.0f} s"
                + ("" if finished else f" (see {cell.run_dir(out) / 'error.txt'})"))
        except Exception:  # noqa: BLE001 - a broken cell is logged and left for the next invocation
            log(f"FAILED {cell.key}\n{traceback.format_exc()}")
    log(f"worker {index} exits")
    return 0


def _keep(path: Path) -> bool:
    """Results, logs and edits under 300 kB travel: JoLA's, ITI's, LoFiT's and RED's, not BitFit's
    (620 kB) or LoRA's (1.8 MB), which are scored with both protocols where they were trained."""
    if path.name.endswith(".tmp"):
        return False
    return path.stat().st_size < (KEEP_EDIT_BYTES if path.suffix == ".safetensors" else 4_000_000)


SNAPSHOT_PART_BYTES = 14 * 2**20  # the lease tool returns files of at most 16 MiB each ...
SNAPSHOT_MAX_PARTS = 7  # ... and at most 8 files: the parts and stage2.sh's grid.log


def file_stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``out``, by relative path.

    Taken when a run starts, it names what the machine already had (the committed results), which
    a snapshot need not send back."""
    stamps = {}
    for path in out.rglob("*"):
        if path.is_file():
            stat = path.stat()
            stamps[str(path.relative_to(out))] = (stat.st_size, stat.st_mtime_ns)
    return stamps


def snapshot(out: Path, dest: Path, since: dict[str, tuple[int, int]] | None = None) -> list[Path]:
    """Tarballs ``results-01.tgz``, ``results-02.tgz``, ... of what finished since ``since`` was taken.

    Only new or changed files are packed, in parts of at most ``SNAPSHOT_PART_BYTES`` (a lease
    returns files of at most 16 MiB: a single tarball of every result outgrew that on 2026-11-28
    and the run's results were lost). Runs without ``result.json`` are left out (but for an
    ``error.txt``): the grid redoes them anyway. Returns the parts written."""
    dest.mkdir(parents=True, exist_ok=True)
    since = since or {}
    members: list[tuple[Path, int]] = []  # with the size, read once
    for group in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "claims"):
        unfinished = {r for r in group.glob("runs/*/*/seed*") if not (r / "result.json").is_file()}
        for path in sorted(group.rglob("*")):
            if not (path.is_file() and _keep(path)):
                continue
            if path.name != "error.txt" and unfinished.intersection(path.parents):
                continue  # a run the deadline cut short is redone from scratch; only its error comes back
            stat = path.stat()
            if since.get(str(path.relative_to(out))) == (stat.st_size, stat.st_mtime_ns):
                continue  # the machine had it when the run started
            members.append((path, stat.st_size))
    parts: list[list[Path]] = [[]]
    size = 0
    for path, file_size in members:
        cost = file_size + 1024  # the tar header and padding, rounded up
        if parts[-1] and size + cost > SNAPSHOT_PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(path)
        size += cost
    if len(parts) > SNAPSHOT_MAX_PARTS:
        print(f"snapshot: {len(parts)} parts of {SNAPSHOT_PART_BYTES >> 20} MiB exceed the {SNAPSHOT_MAX_PARTS} "
              "files a lease returns; the last ones will not come back (run fewer cells per call)", file=sys.stderr)
    written = []
    for i, part in enumerate(parts, start=1):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in part:
                tar.add(path, arcname=str(path.relative_to(out)))
        target = dest / f"results-{i:02d}.tgz"
        tmp = dest / f".{target.name}.tmp"
        tmp.write_bytes(buf.getvalue())
        tmp.replace(target)
        written.append(target)
    for stale in set(dest.glob("results-*.tgz")) - set(written):
        stale.unlink()  # a part left from an earlier snapshot with more parts
    return written


def tables(out: Path) -> None:
    from jolalens.compare import write_tables

    for group_dir in sorted(p for p in out.iterdir() if (p / "compare_config.json").is_file()):
        if not any((group_dir / "runs").rglob("result.json")):
            continue  # a group with no finished run yet gets no empty table
        write_tables(group_dir)
        print(f"{group_dir}/summary.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--eval-batch-size", type=int, default=8, help="speed only; not part of the protocol")
    parser.add_argument("--deadline", type=float, default=None, help="seconds: stop claiming cells at 85%%, stop workers at 100%%")
    parser.add_argument("--let-running-finish", action="store_true",
                        help="with --deadline: stop claiming at the deadline and let running cells finish (no kill)")
    parser.add_argument("--snapshot", type=Path, default=None)
    parser.add_argument("--only", default=None, help="comma-separated groups (main, gen, nlu, nlg, datasize_n200, ...)")
    parser.add_argument("--methods", default=None, help="comma-separated methods (zeroshot, jola, ...): only their cells")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (openbookqa, mmlu_law, ...): only their cells")
    parser.add_argument("--skip", default=None,
                        help="comma-separated cell keys or shell patterns to leave out, e.g. 'main__piqa__*' (see --plan)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (8 examples, 1 epoch) to check the machinery")
    parser.add_argument("--tf32", action="store_true", help="TF32 matrix products on a GPU (recorded in the run's logs/<run>/invocation.json)")
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--tables", action="store_true")
    parser.add_argument("--check-data", action="store_true",
                        help="exit 2, naming them, if the selected cells' tasks are not all cached here")
    parser.add_argument("--reextract", action="store_true",
                        help="read the stored generations' answers again with the current extractor (no model needed)")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stop-claiming-at", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.only = None if args.only is None else set(args.only.split(","))
    args.methods = None if args.methods is None else set(args.methods.split(","))
    args.tasks = None if args.tasks is None else set(args.tasks.split(","))
    args.skip = () if not args.skip else tuple(args.skip.split(","))
    if args.let_running_finish and args.deadline is None:
        parser.error("--let-running-finish softens --deadline; give --deadline SECONDS too")
    keys = [c.key for c in plan()]
    unmatched = [pat for pat in args.skip if not any(fnmatch.fnmatchcase(k, pat) for k in keys)]
    if unmatched:
        parser.error(f"--skip: {unmatched} match no cell of the plan; cell keys look like main__piqa__red__seed1 (--plan lists them)")
    for name, given, field in (("--only", args.only, "group"), ("--methods", args.methods, "method"), ("--tasks", args.tasks, "task")):
        known = {getattr(c, field) for c in plan()}
        if given and not given <= known:
            parser.error(f"{name}: unknown {sorted(given - known)}; choose from {sorted(known)}")
    if args.plan:
        cells = selected(args.only, args.methods, args.tasks, args.skip)
        counts: dict[str, list[int]] = {}
        for i, c in enumerate(cells):
            done = _done(c, args.out)
            counts.setdefault(c.group, [0, 0])[0] += done
            counts[c.group][1] += 1
            print(f"{i:4d} {c.key}{'  (done)' if done else ''}")
        print("done: " + ", ".join(f"{g} {d}/{n}" for g, (d, n) in counts.items())
              + f"; all {sum(d for d, _ in counts.values())}/{len(cells)}")
        return 0
    if args.tables:
        tables(args.out)
        return 0
    if args.check_data:
        missing = uncached_tasks(selected(args.only, args.methods, args.tasks, args.skip))
        if missing:
            print(f"tasks not cached here: {', '.join(missing)}. Load each once to cache it, e.g. python -c "
                  f"\"from jolalens.tasks import load_task_splits; load_task_splits('{missing[0]}', n_train=0, "
                  f"n_valid=0, n_test=1)\"; it names any archive it lacks and how to fetch it.", file=sys.stderr)
            return 2
        print("every task of the selected cells is cached")
        return 0
    if args.reextract:
        from jolalens.tasks import load_task_splits

        n_test, tests = group_config("main").n_test, {}
        for run_dir in sorted(args.out.glob("main/runs/*/*/seed*")):
            task = run_dir.parent.parent.name
            if task not in tests:
                tests[task] = load_task_splits(task, n_train=0, n_valid=0, n_test=n_test).test
            change = reextract_generation(run_dir, task, tests[task])
            if change is not None:
                print(f"{run_dir.relative_to(args.out)}: {100 * change[0]:.1f} -> {100 * change[1]:.1f}")
        return 0
    if args.worker_index is not None:
        return worker(args, args.worker_index)
    return coordinate(args)


def coordinate(args: argparse.Namespace) -> int:
    """Stamp every group's directory, start the workers, snapshot, stop them at the deadline."""
    from jolalens import load_model
    from jolalens.compare import _check_out_dir
    from jolalens.models import model_identity

    out: Path = args.out
    t0 = time.time()
    model = load_model()  # converts the embedded GGUF once, before the workers race for it
    identity = model_identity(model)
    del model
    groups = sorted({c.group for c in selected(args.only, args.methods, args.tasks, args.skip)} - {"gen"} | {"main", "rerun"})
    for group in groups:
        _check_out_dir(out / group, group_config(group, smoke=args.smoke, eval_batch_size=args.eval_batch_size), identity)
    (out / "claims").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    release_stale_claims(out)
    import torch

    machine = {"command": "python benchmarks/paper_grid.py " + " ".join(sys.argv[1:]), "platform": platform.platform(),
               "cpus": os.cpu_count(), "device": args.device, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    import transformers

    machine["transformers"] = transformers.__version__
    machine["tf32"] = bool(args.tf32)
    machine["workers"] = args.workers
    # each invocation logs into a folder of its own, so that two coordinators (or a lent GPU's
    # results unpacked beside this machine's) never write to the same files
    already_there = file_stamps(out) if args.snapshot else {}  # the snapshots send back only what is new
    log_dir = out / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.device}-{socket.gethostname()}-{os.getpid()}"
    log_dir.mkdir(parents=True)
    (log_dir / "invocation.json").write_text(json.dumps(machine, indent=2) + "\n")
    stop_claiming, kill_at = deadline_times(t0, args.deadline, let_running_finish=args.let_running_finish)
    base = [sys.executable, __file__, "--out", str(out), "--device", args.device, "--threads", str(args.threads),
            "--eval-batch-size", str(args.eval_batch_size), "--log-dir", str(log_dir)]
    if args.smoke:
        base.append("--smoke")
    if args.tf32:
        base.append("--tf32")
    if args.only:
        base += ["--only", ",".join(sorted(args.only))]
    if args.methods:
        base += ["--methods", ",".join(sorted(args.methods))]
    if args.tasks:
        base += ["--tasks", ",".join(sorted(args.tasks))]
    if args.skip:
        base += ["--skip", ",".join(args.skip)]
    if stop_claiming is not None:
        base += ["--stop-claiming-at", str(stop_claiming)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([*base, "--worker-index", str(i)], env=env, start_new_session=True) for i in range(args.workers)]
    last_snap = 0.0
    while any(p.poll() is None for p in procs):
        if kill_at is not None and time.time() > kill_at:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            break
        if args.snapshot and time.time() - last_snap > 30:
            snapshot(out, args.snapshot, already_there)
            last_snap = time.time()
        time.sleep(2)
    for p in procs:
        p.wait()
    tables(out)
    if args.snapshot:
        snapshot(out, args.snapshot, already_there)
    cells = selected(args.only, args.methods, args.tasks, args.skip)
    done = sum(_done(c, out) for c in cells)
    print(f"{done}/{len(cells)} cells done after {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
