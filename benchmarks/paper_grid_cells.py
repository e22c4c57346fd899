"""The paper grid's definition: its tasks, methods and seeds, its cells in run order, each group's protocol.

:mod:`paper_grid` runs the cells; this module only says what they are (``--plan`` lists them).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ABLATIONS",
    "ABLATION_TASKS",
    "BASELINES",
    "CLOZE_METHODS",
    "COMMONSENSE",
    "DATASIZES",
    "DATASIZE_METHODS",
    "DATASIZE_TASKS",
    "GEM",
    "GEMMA_METHODS",
    "MMLU",
    "SEEDS",
    "SEED_ORDER",
    "Cell",
    "check_methods",
    "group_config",
    "group_model",
    "group_runs",
    "plan",
    "selected",
    "uncached_tasks",
]

COMMONSENSE = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "siqa", "winogrande")
MMLU = (
    "mmlu_business",
    "mmlu_economics",
    "mmlu_health",
    "mmlu_history",
    "mmlu_law",
    "mmlu_math",
    "mmlu_other",
    "mmlu_philosophy",
    "mmlu_physics",
    "mmlu_psychology",
)
GEM = ("common_gen", "e2e_nlg", "web_nlg", "xsum")
BASELINES = ("zeroshot", "jola", "iti", "red", "lofit", "bitfit", "lora")
SEED_ORDER = ("red", "bitfit", "lofit", "iti", "lora")  # by seed-0 average (RED 36.7 ... ITI 35.9; LoRA unfinished)
ABLATIONS = ("jola_additive", "jola_multiplicative", "jola_shared_gate", "jola_no_gate")
ABLATION_TASKS = ("openbookqa", "arc_easy", "boolq", "piqa")
DATASIZE_TASKS = ("arc_easy", "boolq")
DATASIZES = (50, 100, 200, 500, 1000)
DATASIZE_METHODS = ("jola", "red", "lora")
SEEDS = (0, 1, 2)
# The cloze grid (issue 39): the paper's seven methods plus LoReFT and RePE (issue 47), scored as
# lm-evaluation-harness scores multiple choice; the JoLA ablations; four methods on Gemma-3-270M.
CLOZE_METHODS = (*BASELINES, "loreft", "repe")
GEMMA_METHODS = ("zeroshot", "jola", "red", "iti")
GEMMA_MODEL = "gemma3-270m"


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
    protocol = Protocol.GEN if group == "nlg" else Protocol.CLOZE if group.startswith("cloze") else Protocol.LOGLIK
    tasks = {"main": COMMONSENSE, "rerun": COMMONSENSE, "nlu": MMLU, "nlg": GEM}.get(group, DATASIZE_TASKS)
    methods = tuple(dict.fromkeys(BASELINES + ABLATIONS))
    if group.startswith("cloze"):
        tasks = COMMONSENSE
        methods = GEMMA_METHODS if group == "cloze_gemma" else tuple(dict.fromkeys(CLOZE_METHODS + ABLATIONS))
    return CompareConfig(
        methods=methods,
        tasks=tasks,
        seeds=SEEDS,
        n_train=n_train,
        n_valid=n_valid,
        n_test=n_test,
        protocol=protocol,
        budget=2,
        train=train,
    )


def group_model(group: str) -> str:
    """The embedded model a group runs on: Gemma-3-270M for ``cloze_gemma``, else SmolLM2-135M."""
    from jolalens.model_loading import DEFAULT_MODEL

    return GEMMA_MODEL if group == "cloze_gemma" else DEFAULT_MODEL


def check_methods() -> None:
    """The grid's methods are fixed for the experiment (literal tuples above, results committed),
    but each must be a registered method (``jolalens.methods.METHODS``), and ``ABLATIONS`` the
    registry's ablations of JoLA; a renamed or removed method fails here, before any work."""
    from jolalens.methods import METHODS

    unknown = sorted({c.method for c in plan()} - set(METHODS))
    if unknown:
        raise SystemExit(f"paper_grid: methods {unknown} are not registered; choose from {', '.join(METHODS)}")
    not_ablations = [m for m in ABLATIONS if METHODS[m].ablation_of != "jola"]
    if not_ablations:
        raise SystemExit(f"paper_grid: ABLATIONS {not_ablations} are not ablations of jola in jolalens.methods")


def plan() -> list[Cell]:
    """Every cell, in the order that covers the issue's tables soonest.

    First the cloze grid (the protocol the embedded models can do, issue 39): seed 0 of every
    method on the eight tasks, the JoLA ablations, Gemma-3-270M, then seeds 1 and 2. Then the
    label-format grid (its results are committed; resuming skips its done cells): seed 0 of the
    main table; the JoLA ablations on four tasks; JoLA's seeds 1 and 2 (is its
    seed-0 lead more than noise?); NLG and NLU; the data-size curves; the generation protocol for
    the main table's seed-0 edits; the other methods' seeds 1 and 2, strongest seed-0 average
    first; then the ablations' seeds and remaining tasks; last, the generation protocol of the
    later seeds' edits where a deadline cut it off.
    """
    cells = [Cell("cloze", t, m, 0) for m in CLOZE_METHODS for t in COMMONSENSE]
    cells += [Cell("cloze", t, m, 0) for m in ABLATIONS for t in COMMONSENSE]
    cells += [Cell("cloze_gemma", t, m, 0) for m in GEMMA_METHODS for t in COMMONSENSE]
    cells += [Cell("cloze", t, m, s) for s in (1, 2) for m in CLOZE_METHODS for t in COMMONSENSE]
    cells += [Cell("main", t, m, 0) for m in BASELINES for t in COMMONSENSE]
    cells += [Cell("main", t, m, 0) for m in ABLATIONS for t in ABLATION_TASKS]
    cells += [Cell("main", t, "jola", s) for s in (1, 2) for t in COMMONSENSE]
    cells += [Cell("nlg", t, m, 0) for t in GEM for m in ("zeroshot", "jola", "red")]
    cells += [Cell("nlu", t, m, 0) for t in MMLU for m in ("zeroshot", "jola", "iti", "red")]
    # n = 200 is the main table's protocol: those runs are the curves' middle point
    cells += [
        Cell(f"datasize_n{n}", t, m, 0) for n in DATASIZES if n != 200 for t in DATASIZE_TASKS for m in DATASIZE_METHODS
    ]
    cells += [Cell("gen", t, m, 0) for m in BASELINES for t in COMMONSENSE]
    cells += [Cell("main", t, m, s) for m in SEED_ORDER for s in (1, 2) for t in COMMONSENSE]
    cells += [Cell("main", t, m, s) for s in (1, 2) for m in ABLATIONS for t in ABLATION_TASKS]
    cells += [Cell("main", t, m, 0) for m in ABLATIONS for t in COMMONSENSE if t not in ABLATION_TASKS]
    # a main cell scores both protocols before it is done, so the generation protocol of a later
    # seed is queued only where a deadline stopped the cell between its two scores
    cells += [Cell("gen", c.task, c.method, c.seed) for c in list(cells) if c.group == "main" and c.seed > 0]
    return cells


def selected(
    only: set[str] | None, methods: set[str] | None, tasks: set[str] | None = None, skip: tuple[str, ...] = ()
) -> list[Cell]:
    """The plan, restricted to some groups, methods and/or tasks (``None``: all of them), less the
    cells whose key matches a ``skip`` pattern (shell wildcards, e.g. ``main__piqa__*``)."""
    return [
        c
        for c in plan()
        if (only is None or c.group in only)
        and (methods is None or c.method in methods)
        and (tasks is None or c.task in tasks)
        and not any(fnmatch.fnmatchcase(c.key, pat) for pat in skip)
    ]


def _done(cell: Cell, out: Path) -> bool:
    name = "gen_result.json" if cell.group == "gen" else "result.json"
    if cell.group == "gen":
        return (Cell("main", cell.task, cell.method, cell.seed).run_dir(out) / name).is_file()
    return (cell.run_dir(out) / name).is_file()


def _ready(cell: Cell, out: Path) -> bool:
    """Re-scoring needs the main run's kept edit first."""
    return (
        cell.group != "gen" or (Cell("main", cell.task, cell.method, cell.seed).run_dir(out) / "result.json").is_file()
    )


def uncached_tasks(cells: list[Cell]) -> list[str]:
    """The cells' tasks that are not in this machine's task cache. A lent GPU machine has no
    network and gets only the cache, so a task missing here fails there at once."""
    from jolalens.tasks.sources import cached_split_sizes

    return sorted(t for t in {c.task for c in cells} if not cached_split_sizes(t))


def group_runs(
    cells: list[Cell], *, smoke: bool = False, eval_batch_size: int = 8
) -> list[tuple[str, object, set[tuple[str, str, int]]]]:
    """The ``jolalens compare --engine ray`` call of each group the cells touch: (group, its
    CompareConfig, the (task, method, seed) cells of it to run), groups in plan order; ``gen``
    cells are not compare runs and are left out."""
    groups = list(dict.fromkeys(c.group for c in cells if c.group != "gen"))
    return [
        (
            g,
            group_config(g, smoke=smoke, eval_batch_size=eval_batch_size),
            {(c.task, c.method, c.seed) for c in cells if c.group == g},
        )
        for g in groups
    ]
